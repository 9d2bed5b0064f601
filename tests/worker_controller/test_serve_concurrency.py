# SPDX-License-Identifier: Apache-2.0
"""50 concurrent requests over two models while a third model is loaded and
unloaded: each succeeds (or gets a 503 with a JSON body); none hangs or is
lost."""

import asyncio

import httpx
import pytest

from tests.worker_controller.test_serve import start_server

ADMIN = "admin-test"


@pytest.fixture(scope="module")
def server(tiny_models):
    root = tiny_models["llama"].parent
    proc, url = start_server(
        str(tiny_models["qwen3"]),
        str(tiny_models["opt"]),
        "--num-workers=3",
        f"--allowed-model-dir={root}",
        f"--admin-token={ADMIN}",
    )
    yield url
    proc.kill()


async def churn_third_model(client: httpx.AsyncClient, llama: str) -> list[int]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    statuses = []
    for _ in range(2):
        r = await client.post(
            "/v1/controller/models",
            headers=headers,
            json={"model": llama, "name": "third"},
            timeout=300,
        )
        statuses.append(r.status_code)
        r = await client.delete("/v1/controller/models/third", headers=headers)
        statuses.append(r.status_code)
    return statuses


async def one_request(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post(
        "/v1/completions",
        json={"model": model, "prompt": "The quick brown fox", "max_tokens": 8},
        timeout=120,
    )


def test_concurrent_requests_during_load_and_unload(server, tiny_models):
    async def run():
        async with httpx.AsyncClient(base_url=server) as client:
            requests = [one_request(client, ("qwen3", "opt")[i % 2]) for i in range(50)]
            return await asyncio.wait_for(
                asyncio.gather(
                    churn_third_model(client, str(tiny_models["llama"])), *requests
                ),
                timeout=600,
            )

    churn, *responses = asyncio.run(run())
    assert churn == [200, 200, 200, 200]
    assert len(responses) == 50
    for i, r in enumerate(responses):
        assert r.status_code in (200, 503), r.text
        body = r.json()
        if r.status_code == 200:
            assert body["model"] == ("qwen3", "opt")[i % 2]
            assert body["usage"]["completion_tokens"] >= 1
        else:
            assert "error" in body
