# SPDX-License-Identifier: Apache-2.0
"""Which of ``vllm serve``'s routes reach a model's app, and why the
others do not.

``vllm serve`` has one model, so its routes need not say which; here every
route that runs a model must find its model in the request. The router
sends a request to a model's app only on a route listed here (an
allowlist, not "whatever the app has"): a route upstream adds, e.g. a
development endpoint that acts on the whole engine, is then answered 404
until someone decides where it goes, and
``tests/worker_controller/test_model_routes.py`` fails, naming it, until it
is added to one of these tables. Routes that installed endpoint plugins
attach are not routed either (none is installed here to list).
"""

import re

# Routed by the ``model`` the request names: the JSON body's field, the
# form field of a multipart upload (``FORM_ROUTES``), or ``?model=`` on a
# GET. A request that names none goes to the one model when the server has
# exactly one, as under `vllm serve`. The model's app must also have the
# route (its tasks decide, as under `vllm serve`); else 404.
MODEL_ROUTES: dict[str, tuple[str, ...]] = {
    # generation
    "/v1/completions": ("POST",),
    "/v1/chat/completions": ("POST",),
    "/v1/chat/completions/batch": ("POST",),
    "/v1/responses": ("POST",),
    "/v1/messages": ("POST",),
    "/v1/messages/count_tokens": ("POST",),
    "/inference/v1/generate": ("POST",),
    "/generative_scoring": ("POST",),
    "/v1/completions/render": ("POST",),
    "/v1/chat/completions/render": ("POST",),
    "/v1/completions/derender": ("POST",),
    "/v1/chat/completions/derender": ("POST",),
    # SageMaker's one route for every request type (the body's shape picks).
    "/invocations": ("POST",),
    # tokenizer
    "/tokenize": ("POST",),
    "/detokenize": ("POST",),
    "/tokenizer_info": ("GET",),  # --enable-tokenizer-info-endpoint
    # pooling: only a pooling model's app has them
    "/pooling": ("POST",),
    "/v1/embeddings": ("POST",),
    "/v2/embed": ("POST",),
    "/classify": ("POST",),
    "/score": ("POST",),
    "/v1/score": ("POST",),
    "/rerank": ("POST",),
    "/v1/rerank": ("POST",),
    "/v2/rerank": ("POST",),
    # speech to text (multipart uploads)
    "/v1/audio/transcriptions": ("POST",),
    "/v1/audio/translations": ("POST",),
    # LoRA adapters at run time (VLLM_ALLOW_RUNTIME_LORA_UPDATING): the
    # base model's app loads them; the router learns them (adapters.py)
    "/v1/load_lora_adapter": ("POST",),
    "/v1/unload_lora_adapter": ("POST",),
}
FORM_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})

# A stored response (``VLLM_ENABLE_RESPONSES_API_STORE=1``, or
# ``background``) lives in the app of the model that made it, and these
# requests name only its id: each loaded model's app is asked in turn.
RESPONSE_ID_ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/responses/{response_id}": ("GET",),
    "/v1/responses/{response_id}/cancel": ("POST",),
}
RESPONSE_ID_PATH = re.compile(r"^/v1/responses/(?P<id>[^/]+)(?P<cancel>/cancel)?$")

# Answered by the router itself, across models.
ROUTER_ROUTES: dict[str, str] = {
    "/health": "200 while the server runs",
    "/ping": "200 while the server runs",
    "/version": "vLLM's version",
    "/metrics": "the controller's metrics and every model's engine metrics",
    "/v1/models": "every model a request may name, with its state",
}

_DEV = (
    "development endpoint (VLLM_SERVER_DEV_MODE) acting on one engine, and "
    "the request names no model"
)
_DOCS = "the router serves no docs pages (a model's would not describe it)"
# Not routed (404), and why.
NOT_ROUTED: dict[str, str] = {
    "/load": "--enable-server-load-tracking counts one app's requests; the "
    "router has no server-wide figure",
    "/v1/realtime": "a WebSocket whose model is named in a message after the "
    "handshake; the router does not proxy WebSockets (refused, 403)",
    "/scale_elastic_ep": "elastic expert parallelism needs data parallelism, "
    "which the pool does not run",
    "/is_scaling_elastic_ep": "elastic expert parallelism needs data "
    "parallelism, which the pool does not run",
    **dict.fromkeys(
        ("/adapters", "/adapters/{adapter_name}"),  # SageMaker's
        "adapters are managed by POST/DELETE /v1/controller/adapters or the "
        "run-time routes /v1/load_lora_adapter and /v1/unload_lora_adapter",
    ),
    "/start_profile": "profiles one engine (--profiler-config) and names no model",
    "/stop_profile": "profiles one engine (--profiler-config) and names no model",
    "/sleep": "parking is the controller's: the management API's park",
    "/wake_up": "parking is the controller's: the management API's unpark",
    "/is_sleeping": "parking is the controller's: GET /v1/controller/models",
    "/openapi.json": _DOCS,
    "/docs": _DOCS,
    "/docs/oauth2-redirect": _DOCS,
    "/redoc": _DOCS,
    "/static": _DOCS,  # --enable-offline-docs
    **dict.fromkeys(
        (
            "/reset_prefix_cache",
            "/reset_mm_cache",
            "/reset_encoder_cache",
            "/pause",
            "/resume",
            "/abort_requests",
            "/is_paused",
            "/init_weight_transfer_engine",
            "/start_weight_update",
            "/start_draft_weight_update",
            "/update_weights",
            "/finish_weight_update",
            "/get_world_size",
            "/collective_rpc",
            "/server_info",
        ),
        _DEV,
    ),
}
