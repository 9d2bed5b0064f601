# SPDX-License-Identifier: Apache-2.0
"""Stock vLLM's own answer to switching models: sleep mode, in one process.

``LLM(..., enable_sleep_mode=True)``, one first output, then ``cycles`` times
``llm.sleep(level=1)`` (weights to host RAM, KV cache dropped),
``llm.wake_up()`` and the next greedy output. It is the anchor for parking in
the controller: the same mechanism, without another model in between.

Prints one ``SLEEP_WAKE {json}`` line per step as it goes (the parent keeps
what it got if the process is cut short). Usage:
``stock_sleep_wake.py MODEL ENGINE_ARGS_JSON PROMPT MAX_TOKENS CYCLES``.
"""

import json
import sys
import time


def emit(kind: str, **values: object) -> None:
    print("SLEEP_WAKE " + json.dumps({"kind": kind, **values}), flush=True)


if __name__ == "__main__":
    launched = time.time()
    model, engine_args, prompt, max_tokens, cycles = (
        sys.argv[1],
        json.loads(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    from vllm import LLM, SamplingParams

    imported = time.time()
    llm = LLM(model=model, enable_sleep_mode=True, **engine_args)
    ready = time.time()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    reference = list(
        llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    )
    emit(
        "start",
        launched=launched,
        imported=imported,
        ready=ready,
        first_output=time.time(),
    )
    for i in range(cycles):
        t0 = time.perf_counter()
        llm.sleep(level=1)
        t1 = time.perf_counter()
        llm.wake_up()
        t2 = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        t3 = time.perf_counter()
        emit(
            "cycle",
            cycle=i,
            sleep_s=t1 - t0,
            wake_up_s=t2 - t1,
            generate_s=t3 - t2,
            same_output=list(out.outputs[0].token_ids) == reference,
        )
