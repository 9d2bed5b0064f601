# SPDX-License-Identifier: Apache-2.0
"""The ``vllm.general_plugins`` entry point: registers ``--load-format
wc_peer`` (``peer/loader.py``) in every vLLM process.

vLLM calls general plugins in each of its processes (API server, engine
core, workers) before any model loads. Registration writes into upstream's
loader registry, whose import costs about half a second in a process that
loads no model (an API server); so if that registry is not imported yet,
the entry point only adds a finder that registers the loader right after
the registry's module is imported, wherever that happens. What is
registered is a stand-in that imports the real loader when vLLM creates it.
Cheap, and idempotent: a second call does nothing.
"""

import importlib.abc
import importlib.util
import sys
from typing import Any

from vllm.logger import init_logger
from vllm.worker_controller.peer import PEER_LOAD_FORMAT

logger = init_logger(__name__)

_REGISTRY = "vllm.model_executor.model_loader"
_registered = False


def register() -> None:
    """Entry point (``setup.py``): makes ``wc_peer`` a load format."""
    if _registered:
        return
    if _REGISTRY in sys.modules:
        _register_now()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def _register_now() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    class PeerLoader(BaseModelLoader):
        """Stands in for ``PeerModelLoader`` in vLLM's registry: importing it
        here could run while our own modules are half imported."""

        def __new__(cls, load_config: Any) -> Any:  # type: ignore[misc]
            from vllm.worker_controller.peer.loader import PeerModelLoader

            return PeerModelLoader(load_config)

        def download_model(self, model_config: Any) -> None:
            raise NotImplementedError

        def load_weights(self, model: Any, model_config: Any) -> None:
            raise NotImplementedError

    register_model_loader(PEER_LOAD_FORMAT)(PeerLoader)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers the loader once vLLM's loader registry has been imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            del loader.exec_module  # back to the loader's own method
            try:
                _register_now()
            except Exception:
                logger.exception("Registering load format %s failed", PEER_LOAD_FORMAT)

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec
