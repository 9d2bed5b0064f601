# SPDX-License-Identifier: Apache-2.0
"""vllm.worker_controller: a pool of warm vLLM processes that load, serve and
unload models in place, without restarting processes.

The public names are imported lazily: pooled processes import submodules of
this package and should not pay for the controller's front-end imports.
"""

from typing import TYPE_CHECKING, Any

# Refuses, at import, a vLLM release the seam was not checked against.
from vllm.worker_controller import compat  # noqa: F401

if TYPE_CHECKING:
    from vllm.worker_controller.config import ControllerSettings
    from vllm.worker_controller.controller import (
        LoadResult,
        UnloadResult,
        WorkerController,
    )

__all__ = ["ControllerSettings", "LoadResult", "UnloadResult", "WorkerController"]


def __getattr__(name: str) -> Any:
    if name == "ControllerSettings":
        from vllm.worker_controller.config import ControllerSettings

        return ControllerSettings
    if name in ("LoadResult", "UnloadResult", "WorkerController"):
        from vllm.worker_controller import controller

        return getattr(controller, name)
    raise AttributeError(name)
