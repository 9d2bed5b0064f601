# SPDX-License-Identifier: Apache-2.0
"""Replicas on one real server (3 workers, catalog ``replicas: {min: 2,
max: 2}``), in this order: requests spread over both replicas with HF's
tokens; bad scale requests change nothing; scale to 1 and back to 2 (the
new replica copies its weights from the other); a replica's worker
SIGKILLed under load (replica 1, then replica 0): its requests end with
503s or error events, the other replica keeps answering 200, and a
replacement loads from it; the autoscaler adds a replica under load and
removes it once idle; a replica above its model's min is evicted, or
swapped into, before a model that has been idle longer."""

import asyncio
import os
import signal
import time

import httpx
import pytest

from tests.worker_controller.http_load import (
    PROMPT,
    completion,
    greedy_tokens,
    summary,
)
from tests.worker_controller.models import hf_greedy
from tests.worker_controller.test_serve import start_server

ADMIN = "admin-replicas"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    catalog = tmp_path_factory.mktemp("replicas") / "models.yaml"
    catalog.write_text(
        f"models:\n  qwen3:\n    model: {tiny_models['qwen3']}\n"
        "    replicas: {min: 2, max: 2}\n"
        f"  auto:\n    model: {tiny_models['qwen3']}\n"
        "    replicas: {min: 1, max: 2}\n"
        f"  llama:\n    model: {tiny_models['llama']}\n"
        f"  opt:\n    model: {tiny_models['opt']}\n"
        f"  solo:\n    model: {tiny_models['qwen3']}\n"
    )
    proc, url = start_server(
        "--num-workers=3",
        f"--model-catalog={catalog}",
        f"--admin-token={ADMIN}",
        # The autoscaler, quick enough for a test.
        "--replica-scale-up-queue=1",
        "--replica-scale-up-after=1s",
        "--replica-idle=5s",
    )
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def listing(url: str, usage: bool = False) -> dict[str, dict]:
    r = httpx.get(
        f"{url}/v1/controller/models",
        params={"usage": "true"} if usage else {},
        headers=ADMIN_HEADERS,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()}


def replicas(url: str, usage: bool = False, name: str = "qwen3") -> dict[int, dict]:
    model = listing(url, usage).get(name)
    return {} if model is None else {r["index"]: r for r in model["replicas"]}


def wait_replicas(url: str, count: int, timeout: float = 240) -> dict[int, dict]:
    """Waits until qwen3 has ``count`` replicas, all ready."""
    deadline = time.monotonic() + timeout
    while True:
        found = replicas(url)
        if len(found) == count and all(r["state"] == "ready" for r in found.values()):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def test_requests_spread_over_replicas(server, tiny_models):
    _, url = server
    first = httpx.post(
        f"{url}/v1/completions",
        json={"model": "qwen3", "prompt": PROMPT, "max_tokens": 4},
        timeout=300,
    )
    assert first.status_code == 200, first.text
    found = wait_replicas(url, 2)
    assert found[1]["weights_load"]["source"] == "peer", found[1]
    assert set(found[0]["workers"]).isdisjoint(found[1]["workers"])
    before = {i: r["requests"] for i, r in replicas(url, usage=True).items()}

    async def burst() -> list:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            return await asyncio.gather(
                *(completion(client, "qwen3", i % 2 == 0, 16) for i in range(8))
            )

    outcomes = asyncio.run(burst())
    expected = hf_greedy(tiny_models["qwen3"], PROMPT, 16)
    for o in outcomes:
        assert o.status == 200 and o.error_type is None, o
        assert o.token_ids == expected
    after = replicas(url, usage=True)
    assert all(r["in_flight"] == 0 for r in after.values()), after
    served = {i: after[i]["requests"] - before[i] for i in after}
    assert sum(served.values()) == 8 and min(served.values()) >= 2, served
    # One model for clients; per-replica counts on /metrics.
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert ids == ["qwen3", "auto", "llama", "opt", "solo"], ids
    metrics = httpx.get(f"{url}/metrics").text
    assert 'vllm_wc_requests_total{model="qwen3",replica="1"}' in metrics
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": "qwen3#1", "prompt": PROMPT, "max_tokens": 2},
    )
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    "name, body, status",
    [
        ("qwen3", {"replicas": 0}, 400),
        ("qwen3", {"replicas": -1}, 400),
        ("qwen3", {"replicas": 4}, 400),  # more than the pool's workers
        ("qwen3", {"replicas": "two"}, 400),
        ("qwen3", {"count": 2}, 400),
        ("nope", {"replicas": 1}, 404),
        ("qwen3#1", {"replicas": 1}, 404),
    ],
)
def test_bad_scale_changes_nothing(server, name, body, status):
    _, url = server
    before = replicas(url)
    r = httpx.post(
        f"{url}/v1/controller/models/{name.replace('#', '%23')}/scale",
        json=body,
        headers=ADMIN_HEADERS,
        timeout=60,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == status
    assert replicas(url) == before


def scale(url: str, count: int) -> dict:
    r = httpx.post(
        f"{url}/v1/controller/models/qwen3/scale",
        json={"replicas": count},
        headers=ADMIN_HEADERS,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_scale_down_and_up(server, tiny_models):
    _, url = server
    wait_replicas(url, 2)
    down = scale(url, 1)
    assert [r["index"] for r in down["replicas"]] == [0], down
    assert down["loaded"] == []
    time.sleep(3)  # the autoscaler keeps it at the new bounds
    assert list(replicas(url)) == [0]
    up = scale(url, 2)
    (loaded,) = up["loaded"]
    assert loaded["weights_load"]["source"] == "peer", loaded
    assert len(up["replicas"]) == 2
    tokens = greedy_tokens(url, "qwen3")
    assert tokens == hf_greedy(tiny_models["qwen3"], PROMPT, 8)


@pytest.mark.parametrize("index", [1, 0], ids=["replica 1", "replica 0"])
def test_killed_replica(server, tiny_models, index):
    """Replica 0 is the model's own record (its name, its catalog entry):
    its death must not take the model down with it either."""
    _, url = server
    found = wait_replicas(url, 2)
    (victim,) = found[index]["workers"]

    async def kill_under_load() -> tuple[list, list]:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            first = asyncio.Event()
            doomed = [
                asyncio.create_task(
                    completion(client, "qwen3", i % 2 == 0, 200, on_first_chunk=first)
                )
                for i in range(6)
            ]
            await asyncio.wait_for(first.wait(), 60)
            os.kill(victim, signal.SIGKILL)
            outcomes = await asyncio.wait_for(asyncio.gather(*doomed), 120)
            # Once the replica is known dead, the other one answers.
            deadline = time.monotonic() + 30
            while replicas(url).get(index, {}).get("workers") == [victim]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            after = [await completion(client, "qwen3", i % 2 == 0, 8) for i in range(4)]
            return outcomes, after

    outcomes, after = asyncio.run(kill_under_load())
    for o in outcomes:
        assert o.allowed() is None, (o.allowed(), o)
    assert any(o.status == 200 and o.error_type is None for o in outcomes), summary(
        outcomes
    )
    expected = hf_greedy(tiny_models["qwen3"], PROMPT, 8)
    for o in after:
        assert o.status == 200 and o.error_type is None, o
        assert o.token_ids == expected
    # A replacement comes up, from the surviving replica's weights.
    deadline = time.monotonic() + 240
    while True:
        found = replicas(url)
        if (
            len(found) == 2
            and all(r["state"] == "ready" for r in found.values())
            and victim not in found[index]["workers"]
        ):
            break
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    assert found[index]["weights_load"]["source"] == "peer", found[index]


def scale_up_by_load(url: str, name: str) -> dict[int, dict]:
    """Sends waves of requests to ``name`` until the autoscaler has given it
    a second replica (from a peer); every request answered 200."""

    async def waves() -> tuple[list, dict]:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            outcomes: list = []
            deadline = time.monotonic() + 240
            while True:
                wave = [completion(client, name, False, 200) for _ in range(8)]
                outcomes += await asyncio.gather(*wave)
                found = replicas(url, name=name)
                if len(found) == 2 and found[1]["state"] == "ready":
                    return outcomes, found
                assert time.monotonic() < deadline, found

    outcomes, found = asyncio.run(waves())
    assert all(o.status == 200 for o in outcomes), summary(outcomes)
    assert found[1]["weights_load"]["source"] == "peer", found[1]
    return found


def test_autoscale_up_and_down(server):
    """With qwen3 unloaded (its replicas go with it), ``auto`` (1..2)
    gets a second replica while its queue stays long, from a peer, and
    loses it once idle."""
    _, url = server
    r = httpx.delete(f"{url}/v1/controller/models/qwen3", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    assert "qwen3" not in listing(url)
    scale_up_by_load(url, "auto")
    deadline = time.monotonic() + 120
    while len(replicas(url, name="auto")) != 1:  # idle: back to min
        assert time.monotonic() < deadline, replicas(url, name="auto")
        time.sleep(0.5)


def test_replica_above_min_is_evicted_first(server, tiny_models):
    """The three workers hold ``llama`` (idle the longest) and ``auto``'s
    two replicas; a request for ``opt`` (another shape: nothing to swap
    into) evicts the replica above ``auto``'s min (1), not the least
    recently used model."""
    _, url = server
    assert greedy_tokens(url, "llama") == hf_greedy(tiny_models["llama"], PROMPT, 8)
    scale_up_by_load(url, "auto")
    assert greedy_tokens(url, "opt") == hf_greedy(tiny_models["opt"], PROMPT, 8)
    models = listing(url)
    assert models["llama"]["state"] == models["opt"]["state"] == "ready", models
    left = replicas(url, name="auto")
    assert list(left) == [0] and left[0]["state"] == "ready", left


def test_replica_above_min_is_swapped_into_first(server, tiny_models):
    """``solo`` (``auto``'s shape, idle the longest) and ``auto``'s two
    replicas hold the three workers; a request for qwen3 (the same shape)
    is swapped into the engine of the replica above ``auto``'s min, not
    into ``solo``'s, and qwen3 (min 2) evicts nothing to reach its min."""
    _, url = server
    for name in ("llama", "opt"):
        r = httpx.delete(
            f"{url}/v1/controller/models/{name}", headers=ADMIN_HEADERS, timeout=120
        )
        assert r.status_code == 200, r.text
    expected = hf_greedy(tiny_models["qwen3"], PROMPT, 8)
    assert greedy_tokens(url, "solo") == expected
    scale_up_by_load(url, "auto")
    assert greedy_tokens(url, "qwen3") == expected
    time.sleep(3)  # a few autoscaler periods
    models = listing(url)
    assert models["solo"]["state"] == models["qwen3"]["state"] == "ready", models
    assert list(replicas(url, name="auto")) == [0]
    assert list(replicas(url)) == [0]
