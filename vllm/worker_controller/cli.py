# SPDX-License-Identifier: Apache-2.0
"""``vllm-wc`` (``python -m vllm.worker_controller.cli``): the management API
from a shell.

``ps`` lists the loaded models, ``workers`` the pooled processes; ``load``,
``unload``, ``park`` and ``unpark`` change them. It talks to a running
``python -m vllm.worker_controller.serve`` over HTTP with its admin token,
taken from ``--admin-token``, ``$VLLM_WC_ADMIN_TOKEN``, ``--admin-token-file``
/ ``$VLLM_WC_ADMIN_TOKEN_FILE``, or else the file the server writes a
generated token to (one per port). Human tables by default; ``--json``
prints the server's JSON answer as it is, for scripts.

Exit status: 0 done; 1 the server answered an error (its message is
printed); 2 bad usage; 3 the server cannot be reached.

Standard library only (``urllib``), so that nothing beyond what importing
``vllm`` itself costs is paid at start.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm.worker_controller.cache_dir import admin_token_path

URL_ENV = "VLLM_WC_URL"
TOKEN_ENV = "VLLM_WC_ADMIN_TOKEN"
TOKEN_FILE_ENV = "VLLM_WC_ADMIN_TOKEN_FILE"
DEFAULT_URL = "http://127.0.0.1:8000"
API = "/v1/controller"

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """A failure to report in one line, with the exit status it means."""

    def __init__(self, message: str, status: int = EXIT_ERROR):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------- connection


class Server:
    """The server's URL and admin token, and requests to its management API."""

    def __init__(self, url: str, token: str | None, token_source: str):
        self.url = url.rstrip("/")
        self.token = token
        self.token_source = token_source

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 60.0
    ) -> Any:
        """The JSON answer of ``method path``; raises :class:`CliError` with
        what went wrong in words (unreachable, refused token, the server's
        error message)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise self._refused(e) from None
        except urllib.error.URLError as e:
            reason = getattr(e.reason, "strerror", None) or str(e.reason)
            raise CliError(
                f"cannot reach the server at {self.url}: {reason}. Is "
                "`python -m vllm.worker_controller.serve` running there? "
                f"(--url or ${URL_ENV})",
                EXIT_UNREACHABLE,
            ) from None
        except TimeoutError:
            raise CliError(
                f"no answer from {self.url} within {timeout:g} s (--timeout)",
                EXIT_UNREACHABLE,
            ) from None
        except ValueError:  # an answer that is not JSON
            raise CliError(
                f"{self.url}{path} answered something other than JSON: is it "
                "a vllm.worker_controller server?"
            ) from None

    def _refused(self, e: urllib.error.HTTPError) -> CliError:
        try:
            error = json.loads(e.read()).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if not isinstance(error, dict) or "message" not in error:
            # Not our error shape: another server, or one without the API.
            return CliError(
                f"{self.url} answered {e.code} {e.reason} without an OpenAI "
                "error body: is it a vllm.worker_controller server (not "
                "`vllm serve`)?"
            )
        if e.code == 401:
            if self.token is None:
                return CliError(
                    f"the server at {self.url} wants its admin token and none "
                    f"was found ({self.token_source}). Pass --admin-token or "
                    f"--admin-token-file, or set ${TOKEN_ENV}."
                )
            return CliError(
                f"the server at {self.url} refused the admin token "
                f"({self.token_source}). A generated token is written anew "
                "at each server start: is this the server's current one?"
            )
        kind = error.get("type") or "Error"
        return CliError(f"{e.code} {kind}: {error['message']}")


def find_token(args: argparse.Namespace, url: str) -> tuple[str | None, str]:
    """The admin token and where it came from (for error messages): the
    flag, the environment, a token file named by flag or environment, else
    the file a server on this URL's port writes a generated token to."""
    if args.admin_token:
        return args.admin_token, "from --admin-token"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"from ${TOKEN_ENV}"
    if args.admin_token_file:
        path, named = Path(args.admin_token_file), "--admin-token-file"
    elif os.environ.get(TOKEN_FILE_ENV):
        path, named = Path(os.environ[TOKEN_FILE_ENV]), f"${TOKEN_FILE_ENV}"
    else:
        path, named = admin_token_path(_port(url)), "the server's default token file"
    try:
        return path.read_text().strip() or None, f"read from {path}"
    except FileNotFoundError:
        return None, f"{named} {path} does not exist"
    except OSError as e:
        raise CliError(f"cannot read the admin token from {path}: {e}") from None


def _port(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url {url!r} is not an http(s)://HOST[:PORT] URL", EXIT_USAGE)
    return port or (443 if parts.scheme == "https" else 80)


# ---------------------------------------------------------------- output


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    if seconds < 59.5:
        return f"{seconds:.0f}s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, as `docker ps` prints them."""
    cells = [list(header)] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _devices(devices: list[str] | None) -> str:
    return ",".join(dict.fromkeys(devices)) if devices else "-"


def _last_load(model: dict[str, Any]) -> str:
    total = (model.get("timings_s") or {}).get("total")
    if total is None or not model.get("brought_up"):
        return "-"
    return f"{model['brought_up']} {_duration(total)}"


def show_models(models: list[dict[str, Any]]) -> str:
    return table(
        ("NAME", "STATE", "REPLICAS", "DEVICE", "MEMORY", "IDLE", "LAST LOAD", "MODEL"),
        [
            (
                m["name"],
                m["state"],
                len(m.get("replicas") or []) or 1,
                _devices(m.get("devices")),
                _bytes(m.get("memory_bytes")),
                _duration(m.get("idle_s")),
                _last_load(m),
                m.get("model"),
            )
            for m in models
        ],
    )


def show_workers(workers: list[dict[str, Any]]) -> str:
    return table(
        ("KIND", "INDEX", "PID", "DEVICE", "STATE", "MODEL", "MEMORY", "BOOT"),
        [
            (
                w["kind"],
                w["index"],
                w["pid"],
                w.get("device") or "-",
                w["state"],
                w.get("model") or "-",
                _bytes((w.get("health") or {}).get("memory_bytes")),
                _duration(w.get("boot_s")),
            )
            for w in workers
        ],
    )


def _phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if k != "total")


# -------------------------------------------------------------- commands


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def cmd_ps(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    path = f"{API}/models?usage=true"
    models = server.request("GET", path, timeout=args.timeout or 60)
    return models, show_models(models)


def cmd_workers(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    workers = server.request("GET", f"{API}/workers", timeout=args.timeout or 60)
    return workers, show_workers(workers)


def cmd_load(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    model = args.model
    if os.path.exists(model):  # a path here: the server needs it absolute
        model = os.path.abspath(model)
    body: dict[str, Any] = {"model": model, "engine_args": engine_args(args.engine_arg)}
    if args.name:
        body["name"] = args.name
    # A first load may compile for minutes: no client-side limit by default.
    loaded = server.request("POST", f"{API}/models", body, timeout=args.timeout)
    timings = loaded.get("timings_s") or {}
    text = (
        f"Loaded {loaded['name']} ({loaded.get('brought_up', 'load')}) in "
        f"{timings.get('total', 0.0):.1f} s: {_phases(timings)}"
    )
    return loaded, text


def cmd_unload(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    path = f"{API}/models/{_quoted(args.name)}"
    answer = server.request("DELETE", path, timeout=args.timeout or 300)
    return answer, f"Unloaded {args.name}"


def cmd_park(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    path = f"{API}/models/{_quoted(args.name)}/park"
    if args.free_memory:
        path += "?free_memory=true"
    answer = server.request("POST", path, timeout=args.timeout or 300)
    seconds = (answer.get("timings_s") or {}).get("park", 0.0)
    return answer, f"Parked {args.name} in {seconds:.2f} s"


def cmd_unpark(server: Server, args: argparse.Namespace) -> tuple[Any, str]:
    path = f"{API}/models/{_quoted(args.name)}/unpark"
    answer = server.request("POST", path, timeout=args.timeout or 300)
    seconds = (answer.get("timings_s") or {}).get("unpark", 0.0)
    return answer, f"Unparked {args.name} in {seconds:.2f} s"


def engine_args(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as ``EngineArgs`` fields: ``max-model-len`` is
    ``max_model_len``; a value that parses as JSON is taken as such
    (``2048``, ``true``, ``{"k": 1}``), anything else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--engine-arg {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.strip().replace("-", "_")] = value
    return out


# ---------------------------------------------------------------- parser


def make_parser() -> argparse.ArgumentParser:
    # The connection options go before or after the command; SUPPRESS keeps
    # a subcommand's unset copy from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the server (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--admin-token",
        default=argparse.SUPPRESS,
        help=f"the management API's token (default: ${TOKEN_ENV}, else the token file)",
    )
    common.add_argument(
        "--admin-token-file",
        default=argparse.SUPPRESS,
        help=f"file holding the token (default: ${TOKEN_FILE_ENV}, else the "
        "file the server writes a generated token to: "
        "~/.cache/vllm-worker-controller/admin-token-PORT, or under "
        "$VLLM_WC_CACHE_DIR)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the server's JSON answer instead of a table",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for the answer (default: 60; unload, park, "
        "unpark: 300; load: no limit)",
    )
    parser = argparse.ArgumentParser(
        prog="vllm-wc",
        parents=[common],
        description="Manage the models of a running "
        "`python -m vllm.worker_controller.serve`.",
        epilog="Exit status: 0 done, 1 the server answered an error, 2 bad "
        "usage, 3 the server cannot be reached.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    add(
        "ps",
        cmd_ps,
        "loaded models: state, devices, memory above the workers' boot "
        "figure, idle time, how the last load went (each model is one engine: "
        "replicas do not exist yet)",
    )
    add("workers", cmd_workers, "pooled processes: kind, pid, device, state, model")
    load = add("load", cmd_load, "load a model and wait until it serves")
    load.add_argument(
        "model",
        metavar="NAME|PATH",
        help="a catalog name, or a folder under the server's --allowed-model-dir",
    )
    load.add_argument("--name", help="serve it under this name (default: folder name)")
    load.add_argument(
        "--engine-arg",
        action="append",
        metavar="KEY=VALUE",
        help="an EngineArgs field (repeatable), e.g. max_model_len=2048",
    )
    unload = add("unload", cmd_unload, "unload a model (its requests are aborted)")
    unload.add_argument("name")
    park = add("park", cmd_park, "park an idle model (GPU: vLLM's sleep mode)")
    park.add_argument("name")
    park.add_argument(
        "--free-memory",
        action="store_true",
        help="free its device memory now (else when another engine needs it)",
    )
    unpark = add("unpark", cmd_unpark, "wake a parked model")
    unpark.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    for option, default in (
        ("url", None),
        ("admin_token", None),
        ("admin_token_file", None),
        ("json", False),
        ("timeout", None),
    ):
        if not hasattr(args, option):
            setattr(args, option, default)
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        _port(url)  # a malformed URL is a usage error, before anything else
        token, source = find_token(args, url)
        answer, text = args.handler(Server(url, token, source), args)
    except CliError as e:
        print(f"vllm-wc: error: {e}", file=sys.stderr)
        return e.status
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
