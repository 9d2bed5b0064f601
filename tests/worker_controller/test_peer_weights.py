# SPDX-License-Identifier: Apache-2.0
"""Peer weight loading in the pool (real engine, CPU): a load of a
checkpoint that another loaded model holds copies that model's loaded
parameters (shared memory, or a gloo broadcast), with the tokens of a disk
load; a damaged or mismatched peer fails the load with a clear error and
the source keeps serving; no usable peer means the checkpoint, said so."""

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.worker_controller.conftest import TINY_ARGS
from tests.worker_controller.models import hf_greedy
from vllm.config.load import LoadConfig
from vllm.worker_controller.errors import ModelLoadError
from vllm.worker_controller.peer import PEER_LOAD_FORMAT
from vllm.worker_controller.peer.descriptor import (
    TensorSpec,
    TransferDescriptor,
    host_identity,
    layout_of,
)
from vllm.worker_controller.peer.verify import PeerMismatchError, check_descriptor
from vllm.worker_controller.peer_routing import reads_a_checkpoint, route_through_peer
from vllm.worker_controller.worker.host_cache import (
    HOST_CACHE_LOAD_FORMAT,
    cache_entry_of,
    route_through_host_cache,
)

PROMPT = "The capital of France is"
TOKENS = 12


@pytest.fixture(scope="module")
def expected(tiny_models) -> list[int]:
    return hf_greedy(tiny_models["qwen3"], PROMPT, TOKENS)


def peer_files() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("vllm-wc-peer-*")}


@pytest.fixture
def source(controller, tiny_models, greedy, expected) -> Iterator[str]:
    """qwen3 loaded from its checkpoint, serving; no export left behind."""
    before = peer_files()
    controller.load(str(tiny_models["qwen3"]), "peer-src", **TINY_ARGS)
    assert greedy("peer-src", PROMPT, TOKENS) == expected
    yield "peer-src"
    (report,) = controller.unload("peer-src").workers
    # Its kept loaded weights and its exports went with it.
    assert not report["recycled"] and not report["leaked"], report
    assert peer_files() <= before


def test_load_copies_a_loaded_models_weights(
    controller, tiny_models, greedy, expected, source
):
    """Shared memory (what ``auto`` picks on one CPU host), then gloo."""
    for transport in ("shm", "gloo"):
        controller.settings.peer_transport = "auto" if transport == "shm" else "gloo"
        try:
            target = controller.load(str(tiny_models["qwen3"]), "peer-dst", **TINY_ARGS)
        finally:
            controller.settings.peer_transport = "auto"
        try:
            figures = target.weights_load
            assert figures["source"] == "peer", figures
            assert figures["transport"] == transport
            assert figures["peer"] == f"model {source!r} of this pool"
            assert figures["bytes"] > 0 and figures["gb_per_s"] > 0
            assert target.timings_s["peer_export"] > 0
            assert greedy("peer-dst", PROMPT, TOKENS) == expected
            listed = {m["name"]: m for m in controller.list_models()}
            assert listed["peer-dst"]["weights_load"]["source"] == "peer"
            # The copy is itself a source now.
            again = controller.export_weights("peer-dst", 0, "shm", host_identity())
            os.unlink(again["shm_path"])
        finally:
            controller.unload("peer-dst")
        assert greedy(source, PROMPT, TOKENS) == expected


def test_a_damaged_or_mismatched_copy_fails_the_load_and_the_source_serves_on(
    controller, tiny_models, greedy, expected, source
):
    def load_from(descriptor: dict, model: str = "qwen3") -> None:
        controller.load(
            str(tiny_models[model]),
            "peer-bad",
            load_format=PEER_LOAD_FORMAT,
            model_loader_extra_config={"peer_descriptors": [descriptor]},
            **TINY_ARGS,
        )

    descriptor = controller.export_weights(source, 0, "shm", host_identity())
    # Flip one byte of one tensor in the shared-memory file.
    spec = descriptor["tensors"][3]
    with open(descriptor["shm_path"], "r+b") as f:
        f.seek(spec["offset"] + spec["nbytes"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="Checksum mismatch in 1 tensor") as e:
        load_from(descriptor)
    assert spec["name"] in str(e.value) and e.value.phase == "weights"
    assert greedy(source, PROMPT, TOKENS) == expected

    # Another architecture: told by name before anything is copied.
    descriptor = controller.export_weights(source, 0, "shm", host_identity())
    with pytest.raises(ModelLoadError, match="do not match this model's parameters"):
        load_from(descriptor, "llama")
    assert not Path(descriptor["shm_path"]).exists()  # the target unlinked it
    assert greedy(source, PROMPT, TOKENS) == expected


def test_no_usable_peer_loads_the_checkpoint_and_says_why(
    controller, tiny_models, greedy, expected
):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loaded = controller.load(
        str(tiny_models["qwen3"]),
        "peer-none",
        load_format=PEER_LOAD_FORMAT,
        model_loader_extra_config={
            "peer_url": f"http://127.0.0.1:{port}",
            "peer_model": "qwen3",
        },
        **TINY_ARGS,
    )
    try:
        figures = loaded.weights_load
        assert figures["source"] == "disk", figures
        assert "unusable" in figures["fallback"] and str(port) in figures["fallback"]
        assert greedy("peer-none", PROMPT, TOKENS) == expected
    finally:
        controller.unload("peer-none")


# The checks themselves, without an engine.


def descriptor_for(params: dict[str, torch.Tensor], **layout) -> TransferDescriptor:
    return TransferDescriptor(
        transfer_id="t",
        transport="shm",
        model="src",
        checkpoint={"config": "c", "weights": "w"},
        layout=layout_of(**{**LAYOUT, **layout}),
        checksum="crc32",
        tensors=[
            TensorSpec(n, list(t.shape), str(t.dtype)[6:], t.nbytes, "")
            for n, t in params.items()
        ],
    )


LAYOUT = dict(rank=0, tp_size=1, pp_size=1, dtype=torch.float32, quantization=None)
PARAMS = {"a.weight": torch.zeros(4, 2), "b.bias": torch.zeros(3)}
CHECKPOINT = {"config": "c", "weights": "w"}


@pytest.mark.parametrize(
    "theirs, layout, checkpoint, error",
    [
        (
            {"a.weight": torch.zeros(4, 2)},
            {},
            CHECKPOINT,
            "b.bias missing from the peer",
        ),
        (
            {**PARAMS, "c.weight": torch.zeros(1)},
            {},
            CHECKPOINT,
            "c.weight not in this model",
        ),
        (
            {**PARAMS, "a.weight": torch.zeros(2, 4)},
            {},
            CHECKPOINT,
            r"a.weight: shape ours \[4, 2\], peer \[2, 4\]",
        ),
        (
            {**PARAMS, "b.bias": torch.zeros(3, dtype=torch.bfloat16)},
            {},
            CHECKPOINT,
            "b.bias: dtype ours float32, peer bfloat16",
        ),
        (PARAMS, {"tp_size": 2}, CHECKPOINT, "tensor_parallel_size: ours 1"),
        (PARAMS, {"dtype": torch.float16}, CHECKPOINT, "dtype: ours 'float32'"),
        (PARAMS, {}, {"config": "other", "weights": "w"}, "serves another checkpoint"),
    ],
)
def test_checks_name_what_differs(theirs, layout, checkpoint, error):
    descriptor = descriptor_for(theirs, **layout)
    with pytest.raises(PeerMismatchError, match=error):
        check_descriptor(descriptor, layout_of(**LAYOUT), PARAMS, checkpoint)


def test_checks_pass_for_the_same_model():
    check_descriptor(descriptor_for(PARAMS), layout_of(**LAYOUT), PARAMS, CHECKPOINT)
    # A target without weight files of its own compares configs only.
    check_descriptor(
        descriptor_for(PARAMS), layout_of(**LAYOUT), PARAMS, {"config": "c"}
    )


def test_routing_to_a_peer_and_back_to_the_checkpoint():
    """The controller routes a load through the peer loader only where it
    would read a checkpoint, and a later swap into that engine (which reads
    a checkpoint again) goes back to the host-cache loader."""
    config = LoadConfig()
    assert route_through_host_cache(config, None)
    assert reads_a_checkpoint(config)
    assert route_through_peer(config, [{"transport": "shm"}])
    assert config.load_format == PEER_LOAD_FORMAT
    assert route_through_host_cache(config, "/dev/shm/entry")
    assert config.load_format == HOST_CACHE_LOAD_FORMAT
    assert "peer_descriptors" not in config.model_loader_extra_config
    assert cache_entry_of(config) == "/dev/shm/entry"
    # A user's own wc_peer load (no fallback format of ours) is left alone.
    own = LoadConfig(load_format=PEER_LOAD_FORMAT)
    assert not route_through_host_cache(own, None) and not reads_a_checkpoint(own)
    assert not route_through_peer(LoadConfig(load_format="dummy"), [])
