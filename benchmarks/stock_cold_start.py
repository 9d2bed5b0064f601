# SPDX-License-Identifier: Apache-2.0
"""Stock vLLM cold start, as a user pays it: a fresh process, ``LLM(...)``,
first output. Prints one JSON line of wall-clock timestamps (``time.time()``)
so the parent can measure from the moment it launched this process."""

import json
import sys
import time

if __name__ == "__main__":
    model, engine_args, prompt, max_tokens = (
        sys.argv[1],
        json.loads(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
    )
    from vllm import LLM, SamplingParams

    imported = time.time()
    llm = LLM(model=model, **engine_args)
    ready = time.time()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    first_output = time.time()
    print(
        "STOCK_RESULT "
        + json.dumps(
            {
                "imported": imported,
                "ready": ready,
                "first_output": first_output,
                "token_ids": list(out.outputs[0].token_ids),
            }
        ),
        flush=True,
    )
