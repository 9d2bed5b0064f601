# SPDX-License-Identifier: Apache-2.0
"""One real server, in this order: (7c) the bad-input table, every case a
4xx with the OpenAI error shape that leaves the models serving; (7b) a
pooled worker and then an engine host SIGKILLed while requests stream to
their model: answers within 5 s, automatic reload on the next request, the
other model untouched, the pool whole again; (7e) SIGTERM with streams in
flight: drained or ended with an error event, exit 0, no process left."""

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.worker_controller.http_load import (
    PROMPT,
    Outcome,
    completion,
    greedy_tokens,
    summary,
)
from tests.worker_controller.models import SEED, build_model, hf_greedy
from tests.worker_controller.test_serve import start_server

ADMIN = "admin-faults"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tiny_models):
    root = tiny_models["llama"].parent
    # The bystander has qwen3's shape: a reload of qwen3 while its new
    # worker boots could take the bystander's engine (a swap), and must not.
    bystander = build_model("qwen3", root, seed=SEED + 1, name="qwen3-b")
    proc, url = start_server(
        str(tiny_models["qwen3"]),
        str(bystander),
        "--num-workers=2",
        f"--allowed-model-dir={root}",
        f"--admin-token={ADMIN}",
        "--max-request-body-mb=1",
    )
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def models(url: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/v1/controller/models", headers=ADMIN_HEADERS)
    return {m["name"]: m for m in r.json()}


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert error["code"] == status
    return error


def huge_body():
    yield b'{"model": "qwen3", "prompt": "'
    for _ in range(40):
        yield b"x" * 65536
    yield b'"}'


BAD_INPUT = [
    # (name, request kwargs, status, error type or None)
    ("long name", {"json": {"model": "m" * 10_000, "prompt": "x"}}, 404, None),
    ("model list", {"json": {"model": [], "prompt": "x"}}, 400, "BadRequestError"),
    ("model dict", {"json": {"model": {}, "prompt": "x"}}, 400, "BadRequestError"),
    ("model int", {"json": {"model": 1, "prompt": "x"}}, 400, "BadRequestError"),
    ("no model", {"json": {"prompt": "x"}}, 400, "BadRequestError"),
    ("array body", {"json": [1, 2]}, 400, "BadRequestError"),
    ("not json", {"content": b"{nope"}, 400, "BadRequestError"),
    ("nul in name", {"json": {"model": "a\0b", "prompt": "x"}}, 404, None),
    ("path name", {"json": {"model": "../../etc", "prompt": "x"}}, 404, None),
    ("unknown model", {"json": {"model": "nope", "prompt": "x"}}, 404, None),
    (
        "too large, announced",
        {"content": b"x" * (2 << 20)},
        413,
        "RequestEntityTooLargeError",
    ),
    ("too large, chunked", {"content": huge_body()}, 413, None),
    (
        "huge prompt",
        {"json": {"model": "qwen3", "prompt": "hello " * 20_000}},
        400,
        "BadRequestError",
    ),
    (
        "bad param",
        {"json": {"model": "qwen3", "prompt": "x", "max_tokens": -1}},
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    "case, kwargs, status, kind", BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input(server, case, kwargs, status, kind):
    _, url = server
    before = models(url)
    r = httpx.post(f"{url}/v1/completions", timeout=60, **kwargs)
    error = assert_openai_error(r, status)
    if kind is not None:
        assert error["type"] == kind, error
    assert models(url) == before  # nothing loaded, evicted or failed


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/nope", 404),
        ("POST", "/v1/nope", 404),
        ("GET", "/v1/completions", 405),
        ("DELETE", "/v1/chat/completions", 405),
        ("POST", "/v1/models", 405),
        ("POST", "/health", 405),
        ("GET", "/v1/controller/nope", 404),
    ],
)
def test_unknown_routes_and_methods(server, method, path, status):
    _, url = server
    r = httpx.request(method, f"{url}{path}", headers=ADMIN_HEADERS)
    assert_openai_error(r, status)


def test_disconnect_mid_stream_leaves_model_serving(server, tiny_models):
    _, url = server
    body = {"model": "qwen3", "prompt": PROMPT, "max_tokens": 200, "stream": True}
    for _ in range(3):
        # A 2-core CI machine can take longer than httpx's 5 s default.
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # one event, then hang up
    tokens = greedy_tokens(url, "qwen3", timeout=60)
    assert tokens == hf_greedy(tiny_models["qwen3"], PROMPT, 8)


async def kill_under_load(url: str, victim_pid: int) -> dict:
    """Streams to qwen3 (and asks qwen3-b alongside), SIGKILLs ``victim_pid``
    once tokens flow; returns the outcomes and how fast they came."""
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        first = asyncio.Event()
        doomed = [
            asyncio.create_task(
                completion(client, "qwen3", i % 2 == 0, 200, on_first_chunk=first)
            )
            for i in range(6)
        ]
        bystander_stop = asyncio.Event()

        async def bystander() -> list:
            outcomes = []
            while not bystander_stop.is_set():
                outcomes.append(await completion(client, "qwen3-b", False, 4))
            return outcomes

        side = asyncio.create_task(bystander())
        await asyncio.wait_for(first.wait(), 60)
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*doomed), 60)
        answered_s = max(o.ended for o in outcomes) - killed_at
        while True:  # the model's state says why it stopped
            listed = await client.get("/v1/controller/models", headers=ADMIN_HEADERS)
            state = {m["name"]: m for m in listed.json()}["qwen3"]
            if state["state"] == "failed" or time.monotonic() - killed_at > 10:
                break
            await asyncio.sleep(0.1)
        while (reload := await completion(client, "qwen3", False, 8)).status == 503:
            assert time.monotonic() - killed_at < 180, reload.error_message
            await asyncio.sleep(float(reload.retry_after or 1))
        reload_s = time.monotonic() - killed_at
        bystander_stop.set()
        return {
            "outcomes": outcomes,
            "answered_s": answered_s,
            "reload": reload,
            "reload_s": reload_s,
            "bystander": await side,
            "state": state,
        }


def respawns(url: str, kind: str) -> float:
    """``vllm_wc_process_respawns_total`` of ``kind`` processes that died."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm_wc_process_respawns_total"
        and sample.labels == {"kind": kind, "reason": "died"}
    )


def queues_of(pid: int) -> set[Path]:
    """The shared memory of the message queues a process maps (Python's
    ``SharedMemory`` names them psm_*; the weight cache's files stay)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]) for line in maps if " /dev/shm/psm_" in line}


@pytest.mark.parametrize("victim", ["worker", "engine_host"])
def test_killed_process_under_load(server, tiny_models, victim, capsys):
    _, url = server
    model, bystander = models(url)["qwen3"], models(url)["qwen3-b"]
    respawns_before = respawns(url, victim)
    pid = model["worker_pids"][0] if victim == "worker" else model["engine_host_pid"]
    queues = queues_of(pid)
    assert queues, "no shared-memory queue found"
    result = asyncio.run(kill_under_load(url, pid))
    outcomes = result["outcomes"]
    with capsys.disabled():
        print(
            f"\nkill {victim}: in-flight {summary(outcomes)} answered in "
            f"{result['answered_s']:.2f} s; reload answered "
            f"{result['reload'].status} at {result['reload_s']:.1f} s; "
            f"bystander {summary(result['bystander'])}"
        )
    for o in outcomes:
        assert o.transport_error is None, o.transport_error
        if o.stream and o.status == 200:
            # Started before the kill: an error event, then [DONE].
            assert o.error_type is not None and o.stream_done, o
        else:
            assert o.status == 503 and o.retry_after, (o.status, o.error_message)
    assert result["answered_s"] < 5
    assert result["state"]["state"] == "failed", result["state"]
    assert f"(pid {pid}) died: SIGKILL" in result["state"]["error"], result["state"]
    reload = result["reload"]
    assert reload.status == 200, (reload.status, reload.error_message)
    assert reload.token_ids == hf_greedy(tiny_models["qwen3"], PROMPT, 8)
    assert all(o.status == 200 for o in result["bystander"]), summary(
        result["bystander"]
    )
    deadline = time.monotonic() + 120
    while True:  # the dead process is replaced: the pool is whole again
        workers = httpx.get(
            f"{url}/v1/controller/workers", headers=ADMIN_HEADERS, timeout=30
        ).json()
        if all(w["state"] in ("idle", "leased") for w in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(1)
    assert pid not in {w["pid"] for w in workers}
    assert respawns(url, victim) == respawns_before + 1
    # The killed process could not remove the queues it made; nor could
    # its peers (not theirs): the controller did.
    assert not [q for q in queues if q.exists()], queues
    assert models(url)["qwen3"]["state"] == "ready"
    # The bystander kept its processes all along (no swap, no eviction).
    keys = ("state", "worker_pids", "engine_host_pid", "brought_up")
    after = models(url)["qwen3-b"]
    assert {k: after[k] for k in keys} == {k: bystander[k] for k in keys}
    # An error that escapes the app drops its keep-alive connection: the
    # next request a pooling client sends on it meets a reset.
    port = url.rsplit(":", 1)[1]
    log = (Path(tempfile.gettempdir()) / f"wc-server-{port}.log").read_text()
    assert "Exception in ASGI application" not in log


def test_management_load_replaces_failed_model(server, tiny_models):
    """A management load of a failed model's name replaces it (no 409)."""
    _, url = server
    (pid,) = models(url)["qwen3"]["worker_pids"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while models(url)["qwen3"]["state"] != "failed":
        assert time.monotonic() < deadline, models(url)
        time.sleep(0.2)
    r = httpx.post(
        f"{url}/v1/controller/models",
        headers=ADMIN_HEADERS,
        json={"model": str(tiny_models["qwen3"]), "name": "qwen3"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert models(url)["qwen3"]["state"] == "ready"
    assert pid not in models(url)["qwen3"]["worker_pids"]


def _streams_then(
    url: str, max_tokens: int, act: Callable[[httpx.AsyncClient], Awaitable[T]]
) -> tuple[list[Outcome], T]:
    """Three streams of qwen3-b; once one has sent its first chunk,
    ``act``. Returns how the streams ended and what ``act`` returned."""

    async def run() -> tuple[list[Outcome], T]:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            first = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    completion(
                        client, "qwen3-b", True, max_tokens, on_first_chunk=first
                    )
                )
                for _ in range(3)
            ]
            await asyncio.wait_for(first.wait(), 60)
            acted = await act(client)
            return await asyncio.wait_for(asyncio.gather(*tasks), 60), acted

    return asyncio.run(run())


def test_unload_ends_streams_with_error_event(server):
    """A management unload with streams in flight: each ends with an error
    event and [DONE], none is cut; the next request loads the model again."""
    _, url = server

    async def unload(client: httpx.AsyncClient) -> int:
        r = await client.delete("/v1/controller/models/qwen3-b", headers=ADMIN_HEADERS)
        return r.status_code

    outcomes, status = _streams_then(url, 230, unload)
    assert status == 200
    for o in outcomes:
        assert o.transport_error is None and o.status == 200, o
        assert o.stream_done, o
    assert any(o.error_type for o in outcomes), summary(outcomes)
    again = httpx.post(
        f"{url}/v1/completions",
        json={"model": "qwen3-b", "prompt": PROMPT, "max_tokens": 4},
        timeout=300,
    )
    assert again.status_code == 200, again.text


def test_sigterm_with_streams_in_flight(server):
    proc, url = server
    children = psutil.Process(proc.pid).children(recursive=True)

    async def sigterm(client: httpx.AsyncClient) -> None:
        os.kill(proc.pid, signal.SIGTERM)

    outcomes, _ = _streams_then(url, 60, sigterm)
    for o in outcomes:
        assert o.transport_error is None and o.status == 200, o
        assert o.stream_done, o  # drained, or an error event then [DONE]
    assert proc.wait(timeout=90) == 0
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, alive
