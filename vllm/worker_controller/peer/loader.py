# SPDX-License-Identifier: Apache-2.0
"""``--load-format wc_peer``: a model's weights copied from a running engine.

A vLLM model-loader plugin (registered from the ``vllm.general_plugins``
entry point, see ``vllm.worker_controller.plugin``), so it works in pooled
workers and in a stock ``vllm serve`` process alike. Configured through
``--model-loader-extra-config``::

    {"peer_url": "http://127.0.0.1:8000", "peer_model": "qwen",
     "peer_token_file": "~/.cache/vllm-worker-controller/admin-token-8000",
     "peer_transport": "auto", "peer_timeout_s": 60}

(the controller itself passes ``peer_descriptors`` instead: descriptors it
obtained from the source's workers). Upstream builds the model as always;
``load_weights`` then asks the source for a descriptor of this rank's
loaded parameters, checks it (layout, names, shapes, dtypes, checkpoint),
copies, verifies a checksum per tensor, and leaves the rest to upstream
(``process_weights_after_loading``). A mismatch or a damaged copy fails the
load; a peer that cannot be reached or cannot serve falls back to the
checkpoint (host cache, else disk), with the reason logged and reported.
"""

import dataclasses
import os
import time
from typing import Any

import torch
from torch import nn

from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.worker_controller.compat.peer import model_parallel_rank, open_cuda_tensor
from vllm.worker_controller.peer import broadcast, shm
from vllm.worker_controller.peer.client import PeerUnavailableError, fetch_descriptor
from vllm.worker_controller.peer.descriptor import (
    TransferDescriptor,
    checkpoint_fingerprint,
    layout_of,
)
from vllm.worker_controller.peer.loaded_state import record
from vllm.worker_controller.peer.verify import (
    PeerMismatchError,
    check_descriptor,
    verify_checksums,
)
from vllm.worker_controller.worker.host_cache import (
    HostCacheModelLoader,
    WeightsLoad,
    annotate_weights_load,
    report_weights_load,
)

logger = init_logger(__name__)


@dataclasses.dataclass
class PeerSettings:
    """The loader's keys of ``model_loader_extra_config``."""

    url: str | None = None
    model: str | None = None
    token: str | None = None
    transport: str = "auto"
    timeout_s: float = 60.0
    descriptors: list[dict[str, Any]] | None = None

    KEYS = {
        "peer_url": "url",
        "peer_model": "model",
        "peer_token": "token",
        "peer_transport": "transport",
        "peer_timeout_s": "timeout_s",
        "peer_descriptors": "descriptors",
    }

    @classmethod
    def pop_from(cls, extra: dict[str, Any]) -> "PeerSettings":
        """Takes this loader's keys out of ``extra`` (upstream's loader
        rejects keys it does not know). ``peer_token_file`` is read here."""
        settings = cls(
            **{cls.KEYS[k]: extra.pop(k) for k in list(extra) if k in cls.KEYS}
        )
        if (path := extra.pop("peer_token_file", None)) is not None:
            with open(os.path.expanduser(path)) as f:
                settings.token = f.read().strip()
        settings.timeout_s = float(settings.timeout_s)
        return settings

    def describe(self) -> str:
        if self.descriptors:
            return f"model {self.descriptors[0].get('model')!r} of this pool"
        return f"{self.url} model {self.model!r}"


class PeerModelLoader(HostCacheModelLoader):
    """Copies the loaded parameters of a peer engine (see the module's
    docstring); the host-cache loader is its checkpoint fallback."""

    def __init__(self, load_config: LoadConfig):
        extra = dict(load_config.model_loader_extra_config or {})
        self.peer = PeerSettings.pop_from(extra)
        super().__init__(
            dataclasses.replace(load_config, model_loader_extra_config=extra)
        )

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        start = time.perf_counter()
        params = dict(model.named_parameters())
        try:
            rank, tp_size, pp_size = model_parallel_rank()
            if any(p.is_meta for p in params.values()):
                raise PeerUnavailableError(
                    "this model quantizes its weights as they load (online "
                    "quantization): there is no loaded state to copy into"
                )
            descriptor = self._descriptor(rank)
        except PeerUnavailableError as e:
            return self._fall_back(model, model_config, str(e))
        layout = layout_of(
            rank, tp_size, pp_size, model_config.dtype, model_config.quantization
        )
        try:
            check_descriptor(
                descriptor, layout, params, checkpoint_fingerprint(model_config.model)
            )
        except PeerMismatchError:
            if descriptor.shm_path is not None:  # no one else will take it
                shm.discard(descriptor.shm_path)
            raise
        destinations = [params[t.name].data for t in descriptor.tensors]
        try:
            with torch.no_grad():
                copied = self._copy(descriptor, destinations)
        except (OSError, RuntimeError, ValueError) as e:
            # Nothing is verified yet, and the checkpoint's load overwrites
            # every parameter: falling back is safe.
            return self._fall_back(
                model, model_config, f"the {descriptor.transport} transfer failed: {e}"
            )
        verify_checksums(descriptor, destinations)
        record(model)
        load = report_weights_load(
            WeightsLoad(
                "peer",
                copied,
                time.perf_counter() - start,
                descriptor.transport,
                self.peer.describe(),
            )
        )
        logger.info(
            "Loaded weights from peer %s (rank %d) via %s: %.1f MiB in %.2f s "
            "(%.2f GB/s), %d tensors checked",
            self.peer.describe(),
            rank,
            descriptor.transport,
            copied / 2**20,
            load.seconds,
            load.as_dict()["gb_per_s"] or 0.0,
            len(descriptor.tensors),
        )

    def _descriptor(self, rank: int) -> TransferDescriptor:
        peer = self.peer
        if peer.descriptors is not None:
            found = [d for d in peer.descriptors if d["layout"]["rank"] == rank]
            if not found:
                raise PeerUnavailableError(f"no descriptor for rank {rank}")
            data = found[0]
        elif peer.url and peer.model:
            data = fetch_descriptor(
                peer.url, peer.model, peer.token, rank, peer.transport, peer.timeout_s
            )
        else:
            raise PeerUnavailableError(
                "no peer configured (peer_url and peer_model in "
                "--model-loader-extra-config)"
            )
        try:
            return TransferDescriptor.from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise PeerUnavailableError(f"unreadable descriptor: {e}") from None

    def _copy(
        self, descriptor: TransferDescriptor, destinations: list[torch.Tensor]
    ) -> int:
        if descriptor.transport == "shm":
            assert descriptor.shm_path is not None
            return shm.read(descriptor.shm_path, descriptor.tensors, destinations)
        if descriptor.transport in ("gloo", "nccl"):
            assert descriptor.rendezvous is not None
            return broadcast.receive(
                descriptor.rendezvous, destinations, self.peer.timeout_s
            )
        return self._copy_cuda_ipc(descriptor, destinations)

    @staticmethod
    def _copy_cuda_ipc(
        descriptor: TransferDescriptor, destinations: list[torch.Tensor]
    ) -> int:
        """GPU, same node: maps each source tensor (CUDA IPC) and copies it
        device to device (over NVLink or PCIe between GPUs)."""
        index = next(
            (
                i
                for i in range(torch.cuda.device_count())
                if str(torch.cuda.get_device_properties(i).uuid)
                == descriptor.device_uuid
            ),
            None,
        )
        if index is None:
            raise RuntimeError(
                f"the source's GPU {descriptor.device_uuid} is not visible here"
            )
        copied = 0
        for spec, dest in zip(descriptor.tensors, destinations, strict=True):
            if spec.ipc is None:
                continue
            shared = list(spec.ipc)
            shared[6] = index  # the source's device, as this process numbers it
            source = open_cuda_tensor(shared)
            dest.copy_(source)
            copied += spec.nbytes
            del source
        torch.cuda.synchronize()
        return copied

    def _fall_back(self, model: nn.Module, model_config: ModelConfig, why: str) -> None:
        logger.warning(
            "Peer weights unusable (%s): loading %s from its checkpoint instead",
            why,
            model_config.model,
        )
        super().load_weights(model, model_config)
        annotate_weights_load(peer=self.peer.describe(), fallback=why)
