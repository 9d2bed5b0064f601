# SPDX-License-Identifier: Apache-2.0
"""(g) The demo model (SmolLM2-135M-Instruct from PyPI) answers correctly."""

from vllm.worker_controller.demo_model import ensure_demo_model
from vllm.worker_controller.serve import chat


def test_demo_model_knows_the_capital_of_france(controller, loop):
    path = ensure_demo_model()
    controller.load(str(path), name="smollm2", max_model_len=512, enforce_eager=True)
    client = controller.engine_client("smollm2")
    answer = loop.run(chat(client, "What is the capital of France?", 32), timeout=300)
    controller.unload("smollm2")
    assert "Paris" in answer, answer
