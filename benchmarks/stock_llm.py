# SPDX-License-Identifier: Apache-2.0
"""Stock vLLM in a fresh process, as a user pays it: import, ``LLM(...)``,
first output; then ``SLEEP_CYCLES`` times sleep(level=1) / wake_up() / output.

Usage: ``stock_llm.py MODEL ENGINE_ARGS_JSON PROMPT MAX_TOKENS SLEEP_CYCLES``
(PROMPT: text or a JSON list of token ids). Prints ``STOCK_RESULT {json}``
(wall-clock stamps: the parent measures from its launch) and a ``SLEEP_WAKE``
line per cycle. Apart from ``gpu_common``, so that it imports vLLM alone.
"""

import json
import sys
import time


def emit(kind: str, **values: object) -> None:
    print(f"{kind} {json.dumps(values)}", flush=True)


if __name__ == "__main__":
    model, engine_args, prompt = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    max_tokens, cycles = int(sys.argv[4]), int(sys.argv[5])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    imported = time.time()
    if cycles:
        engine_args["enable_sleep_mode"] = True
    llm = LLM(model=model, **engine_args)
    ready = time.time()
    if prompt.startswith("["):
        prompt = TokensPrompt(prompt_token_ids=json.loads(prompt))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    def generate() -> list[int]:
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        return list(out.outputs[0].token_ids)

    first = generate()
    stamps = {"imported": imported, "ready": ready, "first_output": time.time()}
    emit("STOCK_RESULT", **stamps, token_ids=first)
    for i in range(cycles):
        t0 = time.perf_counter()
        llm.sleep(level=1)
        t1 = time.perf_counter()
        llm.wake_up()
        t2 = time.perf_counter()
        same = generate() == first
        times = {"sleep_s": t1 - t0, "wake_up_s": t2 - t1}
        times["generate_s"] = time.perf_counter() - t2
        emit("SLEEP_WAKE", cycle=i, **times, same_output=same)
