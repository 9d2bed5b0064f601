# SPDX-License-Identifier: Apache-2.0
"""(7a) HTTP churn: concurrent streaming and non-streaming requests to
three models that are loaded on demand, evicted (LRU, keep-alive),
unloaded and reloaded over the management API at the same time, once with
``--max-loaded-models 1`` and once with fewer workers than models. Every
answer is a 200 with HF's greedy tokens or a 503 with ``Retry-After`` and
an OpenAI error body: no 500, no reset, no hang."""

import asyncio
import random

import httpx
import pytest

from tests.worker_controller.http_load import PROMPT, Outcome, completion, summary
from tests.worker_controller.models import hf_greedy
from tests.worker_controller.test_serve import server_log, start_server

ADMIN = "admin-churn"
MODELS = ("qwen3", "opt", "llama")
REQUESTS = 48
CONCURRENCY = 6
MAX_TOKENS = 8


@pytest.fixture(scope="module", params=["max-loaded-1", "one-worker"])
def server(request, tiny_models):
    root = tiny_models["llama"].parent
    pool = {
        "max-loaded-1": ["--num-workers=2", "--max-loaded-models=1"],
        "one-worker": ["--num-workers=1"],
    }[request.param]
    proc, url = start_server(
        str(tiny_models["qwen3"]),
        f"--allowed-model-dir={root}",
        f"--admin-token={ADMIN}",
        "--keep-alive=4s",
        *pool,
    )
    yield request.param, url
    proc.kill()
    proc.wait(30)


async def management_churn(client: httpx.AsyncClient, opt: str) -> list[int]:
    """Loads and unloads a fourth name beside the traffic."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    statuses = []
    for _ in range(2):
        r = await client.post(
            "/v1/controller/models",
            headers=headers,
            json={"model": opt, "name": "mgmt"},
            timeout=300,
        )
        statuses.append(r.status_code)
        await asyncio.sleep(1)
        r = await client.delete("/v1/controller/models/mgmt", headers=headers)
        statuses.append(r.status_code)
    return statuses


async def traffic(url: str, opt: str) -> tuple[list[Outcome], list[int]]:
    rng = random.Random(0)
    # Runs of one model, so that loads are shared by several requests.
    plan = [(MODELS[(i // 8) % 3], rng.random() < 0.5) for i in range(REQUESTS)]
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:

        async def one(model: str, stream: bool) -> Outcome:
            async with limit:
                return await completion(client, model, stream, MAX_TOKENS)

        churn = asyncio.create_task(management_churn(client, opt))
        outcomes = await asyncio.gather(*(one(m, s) for m, s in plan))
        return list(outcomes), await churn


def test_churn_every_answer_allowed(server, tiny_models, capsys):
    kind, url = server
    expected = {m: hf_greedy(tiny_models[m], PROMPT, MAX_TOKENS) for m in MODELS}
    try:
        outcomes, churn = asyncio.run(
            asyncio.wait_for(traffic(url, str(tiny_models["opt"])), 900)
        )
    except Exception:
        # The server's side of a hang, for the CI log.
        print("".join(server_log(url).read_text().splitlines(True)[-200:]))
        raise
    with capsys.disabled():
        print(f"\nchurn[{kind}]: {summary(outcomes)}; management {churn}")
    bad = [(o.model, o.stream, o.allowed()) for o in outcomes if o.allowed()]
    assert not bad, bad
    for o in outcomes:
        if o.status == 200:
            assert o.error_type is None, (o.model, o.error_message)
            assert o.token_ids == expected[o.model], o.model
    served = {o.model for o in outcomes if o.status == 200}
    assert served == set(MODELS), summary(outcomes)
    # A load may wait for room (503) or find its name taken (409); an
    # unload may find it gone (404) or loading (409). Never a 500.
    assert set(churn) <= {200, 404, 409, 503}, churn
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200
