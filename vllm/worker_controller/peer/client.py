# SPDX-License-Identifier: Apache-2.0
"""The target's request for a descriptor: one authenticated HTTP call to
the management API of ``python -m vllm.worker_controller.serve``.

Standard library only (it runs inside stock vLLM processes), no proxies
(a management API is not reached through one), the admin token as a
bearer token. Any failure to get a descriptor is "no peer usable", and the
loader reads the checkpoint instead.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from vllm.worker_controller.peer.descriptor import host_identity

EXPORT_PATH = "/v1/controller/models/{name}/weights/export"


class PeerUnavailableError(RuntimeError):
    """No usable peer: the load falls back to the checkpoint, saying why."""


def fetch_descriptor(
    url: str,
    model: str,
    token: str | None,
    rank: int,
    transport: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Asks the server at ``url`` to export rank ``rank`` of its model
    ``model``; the descriptor, or ``PeerUnavailableError``."""
    endpoint = url.rstrip("/") + EXPORT_PATH.format(name=urllib.parse.quote(model))
    body = json.dumps(
        {"rank": rank, "transport": transport, "host": host_identity()}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(endpoint, body, headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as e:
        raise PeerUnavailableError(
            f"{endpoint} answered {e.code}: {_message(e)}"
        ) from None
    except (OSError, ValueError) as e:  # URLError, timeouts, bad JSON
        raise PeerUnavailableError(f"{endpoint} unusable: {e}") from None


def _message(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)
