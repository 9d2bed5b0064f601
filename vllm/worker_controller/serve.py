# SPDX-License-Identifier: Apache-2.0
"""``python -m vllm.worker_controller.serve``: the warm pool from the command line.

Until the OpenAI-compatible front door lands, this is a demonstration of
the product's point: it starts a warm pool, loads a model (the SmolLM2 demo
model by default), answers a chat prompt, unloads it and loads it again in
the same processes, printing where the time went each time.
"""

import argparse
import asyncio
import json
import time
import uuid

from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker_controller.controller import WorkerController
from vllm.worker_controller.demo_model import ensure_demo_model

logger = init_logger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vllm.worker_controller.serve",
        description="Warm vLLM worker pool: load, answer, unload and reload a "
        "model in place, without restarting processes.",
    )
    parser.add_argument(
        "model", nargs="?", help="model path (default: the SmolLM2 demo model)"
    )
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CPU (vLLM's CPU compile takes a minute here and, "
        "for the demo model, changes its greedy answer exactly as stock vLLM "
        "does), off on GPU",
    )
    parser.add_argument("--cycles", type=int, default=2, help="load/unload cycles")
    return parser


async def chat(client, prompt: str, max_tokens: int) -> str:
    tokenizer = client.get_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=False,
    )
    tokens = TokensPrompt(
        prompt_token_ids=tokenizer.encode(text, add_special_tokens=False)
    )
    final = None
    async for out in client.generate(
        tokens, SamplingParams(temperature=0, max_tokens=max_tokens), uuid.uuid4().hex
    ):
        final = out
    return final.outputs[0].text


def main() -> None:
    args = make_parser().parse_args()
    model = args.model or str(ensure_demo_model())
    eager = (
        current_platform.is_cpu() if args.enforce_eager is None else args.enforce_eager
    )
    engine_args = dict(max_model_len=args.max_model_len, enforce_eager=eager)
    start = time.perf_counter()
    with WorkerController(num_workers=args.num_workers) as controller:
        print(
            f"warm pool of {args.num_workers} worker(s) up in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        loop = asyncio.new_event_loop()
        for cycle in range(1, args.cycles + 1):
            loaded = controller.load(model, name="model", **engine_args)
            t0 = time.perf_counter()
            answer = loop.run_until_complete(
                chat(controller.engine_client("model"), args.prompt, args.max_tokens)
            )
            print(
                json.dumps(
                    {
                        "cycle": cycle,
                        "worker_pids": loaded.worker_pids,
                        "load_s": {k: round(v, 3) for k, v in loaded.timings_s.items()},
                        "first_answer_s": round(time.perf_counter() - t0, 3),
                        "prompt": args.prompt,
                        "answer": answer,
                    },
                    indent=2,
                ),
                flush=True,
            )
            controller.unload("model")
            # Let the loop run the client's cancelled output handler to its end.
            loop.run_until_complete(asyncio.sleep(0))


if __name__ == "__main__":
    main()
