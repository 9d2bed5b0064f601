# SPDX-License-Identifier: Apache-2.0
"""Errors raised by the worker controller.

Each error says what was asked and why it cannot be done, so that a caller
(and later the HTTP front door) can map it to a clear response without
parsing messages.
"""


class WorkerControllerError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelLoadError(WorkerControllerError):
    """A load failed; ``phase`` names the step that failed.

    The pool has been cleaned up before this is raised: nothing of the
    failed model stays loaded.
    """

    def __init__(self, name: str, phase: str, message: str):
        super().__init__(f"Loading model {name!r} failed during {phase}: {message}")
        self.name = name
        self.phase = phase


class InvalidEngineArgsError(WorkerControllerError, ValueError):
    """Engine arguments that vLLM's ``EngineArgs`` does not accept."""


class ModelAlreadyLoadedError(WorkerControllerError):
    """A load asked for a name that is already taken."""


class ModelNotFoundError(WorkerControllerError, KeyError):
    """No model of that name is known to the controller."""

    def __str__(self) -> str:
        return str(self.args[0])


class ParkingUnavailableError(WorkerControllerError):
    """A model cannot be parked (or unparked) now, and why."""


class InsufficientWorkersError(WorkerControllerError):
    """The pool has fewer idle processes than the request needs."""


class PoolTooSmallError(InsufficientWorkersError, ValueError):
    """The request needs more processes than the whole pool has: waiting
    cannot help."""


class ModelBusyError(WorkerControllerError):
    """The model is in a transition (loading, unloading, ...) that must end
    before this can be done."""


class SwapUnavailableError(ModelBusyError):
    """The idle model chosen for a swap could not give up its engine (it
    changed state, or a rank stopped mid-request); nothing was loaded and
    the caller loads normally instead."""


class ModelUnavailableError(WorkerControllerError):
    """No room (processes, device memory, a model slot) could be made in
    time; ``retry_after_s`` says when trying again may help."""

    def __init__(self, message: str, retry_after_s: float | None = 5.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineArgNotAllowedError(WorkerControllerError):
    """An engine argument that reads files, opens sockets or loads code was
    asked for where the operator did not allow it."""


class WorkerLostError(WorkerControllerError):
    """A pooled process died while a request to it was pending."""


class RemoteCallError(WorkerControllerError):
    """A request raised inside a pooled process.

    ``error_type`` is the remote exception's class name; the remote
    traceback is logged by the process that raised it.
    """

    def __init__(self, method: str, error_type: str, message: str):
        super().__init__(f"{method} failed in pooled process: {error_type}: {message}")
        self.method = method
        self.error_type = error_type
        self.remote_message = message


class InvalidAdapterError(WorkerControllerError, ValueError):
    """A LoRA adapter folder the engine would refuse (no config or weights,
    a rank above the base's ``max_lora_rank``, DoRA, bias, ...); checked
    before any engine sees it."""


class AdapterLoadError(WorkerControllerError):
    """The base's engine refused a LoRA adapter that passed the checks
    (e.g. weights that do not fit the base); the base serves on without it."""


class AdapterConflictError(WorkerControllerError):
    """A LoRA adapter cannot be added or removed in the state things are in
    (the name is taken, the adapter is the catalog's, ...)."""


class LoRANotEnabledError(AdapterConflictError):
    """A LoRA adapter's base is loaded without LoRA (``enable_lora``): its
    next load enables it, this one cannot."""


class PeerExportError(WorkerControllerError):
    """A model cannot serve as a peer load's source now (not ready, or its
    loaded weights are not available), and why."""


class PeerExportRequestError(PeerExportError, ValueError):
    """A peer export asked for something that cannot be: a rank the model
    does not have, a transport that cannot carry its tensors."""
