# SPDX-License-Identifier: Apache-2.0
"""Access: API keys (also from VLLM_API_KEY), the admin token and its file,
the engine-args allowlist, TLS and the server flags that cannot be honoured.

Unit tests first; then one real server process (one worker) for what only
the whole server shows: every management route behind the admin token,
``/v1`` behind the key, and refused engine args that change nothing."""

import datetime
import ipaddress
import os
import ssl
import stat
import threading
import time
from argparse import Namespace
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.worker_controller.models import hf_greedy
from tests.worker_controller.test_serve import (
    PROMPT,
    free_port,
    greedy_completion,
    start_server,
)
from vllm.worker_controller import serve
from vllm.worker_controller.access import (
    ALLOWED_ENGINE_ARGS,
    ENGINE_ARG_FIELDS,
    REFUSED_ENGINE_ARGS,
    BearerAuth,
    api_keys,
    check_engine_args,
    uvicorn_ssl_kwargs,
    write_secret_file,
)
from vllm.worker_controller.errors import EngineArgNotAllowedError

API_KEY = "sk-from-env"

# ------------------------------------------------------------- allowlist


def test_every_engine_arg_is_classified():
    """A field vLLM adds must be reviewed: allowed, or refused with why."""
    assert not ALLOWED_ENGINE_ARGS & REFUSED_ENGINE_ARGS.keys()
    assert ALLOWED_ENGINE_ARGS | REFUSED_ENGINE_ARGS.keys() == ENGINE_ARG_FIELDS


@pytest.mark.parametrize(
    "field",
    [
        "tokenizer",  # could redirect a trusted entry's remote code
        "allowed_local_media_path",  # reads local files
        "kv_events_config",  # binds a socket
        "worker_extension_cls",  # imports code by qualname
        "compilation_config",
        "speculative_config",
        "hf_overrides",
        "load_format",
        "trust_remote_code",
        "model",
    ],
)
def test_refused_engine_args(field):
    with pytest.raises(EngineArgNotAllowedError, match=repr(field)):
        check_engine_args({"dtype": "float32", field: "x"})


def test_allowed_engine_args():
    check_engine_args(
        {
            "dtype": "float32",
            "max_model_len": 256,
            "enforce_eager": True,
            "gpu_memory_utilization": 0.5,
            "tensor_parallel_size": 2,
            "quantization": "fp8",
            "enable_sleep_mode": True,
        }
    )
    # Unknown names are vLLM's to reject (as invalid: 400, not 403).
    check_engine_args({"no_such_arg": 1})
    check_engine_args({"tokenizer": "/t"}, allowed_extra=frozenset({"tokenizer"}))
    with pytest.raises(EngineArgNotAllowedError) as e:
        check_engine_args({"tokenizer": "/t", "worker_cls": "m.C", "seed": 1})
    assert "'tokenizer'" in str(e.value) and "'worker_cls'" in str(e.value)


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_catalog_allow_engine_args(tmp_path):
    catalog = serve.load_catalog(
        write_catalog(
            tmp_path,
            "models:\n"
            "  own-tokenizer:\n"
            "    model: /m/a\n"
            "    engine_args: {tokenizer: /m/tok, max_model_len: 64}\n"
            "    allow_engine_args: [tokenizer]\n"
            "  trusted:\n"
            "    model: /m/b\n"
            "    trust_remote_code: true\n",
        )
    )
    assert catalog["own-tokenizer"].engine_args == {
        "tokenizer": "/m/tok",
        "max_model_len": 64,
    }
    assert catalog["own-tokenizer"].allow_engine_args == {"tokenizer"}
    assert catalog["trusted"].engine_args == {"trust_remote_code": True}
    assert catalog["trusted"].allow_engine_args == frozenset()


@pytest.mark.parametrize(
    "entry, message",
    [
        ("engine_args: {tokenizer: /etc}", "'tokenizer'"),
        ("engine_args: {trust_remote_code: true}", "trust_remote_code: true"),
        ("allow_engine_args: [trust_remote_code]", "trust_remote_code"),
        ("allow_engine_args: [model]", "set by the controller"),
        ("allow_engine_args: [tokeniser]", "not EngineArgs fields"),
    ],
)
def test_bad_catalog_fails_at_start(tmp_path, capsys, entry, message):
    path = write_catalog(tmp_path, f"models:\n  bad:\n    model: /m\n    {entry}\n")
    with pytest.raises(SystemExit) as e:
        serve.parse_cli([f"--model-catalog={path}"])
    assert e.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "catalog model 'bad'" in error and message in error, error


# ------------------------------------------------------------ tokens


def test_secret_file_is_private(tmp_path):
    path = tmp_path / "new" / "token"
    write_secret_file(path, "s3cret")
    assert path.read_text() == "s3cret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A symlink planted at the path is replaced, not written through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    path.unlink()
    path.symlink_to(elsewhere)
    write_secret_file(path, "again")
    assert not path.is_symlink() and path.read_text() == "again\n"
    assert elsewhere.read_text() == "untouched"
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]


def test_generated_admin_token_goes_to_a_file_not_the_output(
    tmp_path, monkeypatch, capfd, caplog
):
    monkeypatch.setenv("VLLM_WC_CACHE_DIR", str(tmp_path / "cache"))
    args, _, _ = serve.parse_cli(["--port=8123"])
    capfd.readouterr()
    token = serve.admin_token(args)
    path = tmp_path / "cache" / "admin-token-8123"
    assert path.read_text().strip() == token and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out, err = capfd.readouterr()
    assert token not in out + err + caplog.text
    assert str(path) in caplog.text
    # A given token is written only where --admin-token-file says.
    args, _, _ = serve.parse_cli(["--port=8124", "--admin-token=given"])
    assert serve.admin_token(args) == "given"
    assert not (tmp_path / "cache" / "admin-token-8124").exists()
    chosen = tmp_path / "chosen"
    args, _, _ = serve.parse_cli(
        ["--admin-token=given", f"--admin-token-file={chosen}"]
    )
    serve.admin_token(args)
    assert chosen.read_text() == "given\n"


def test_api_keys(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert api_keys(Namespace(api_key=None)) == []
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert api_keys(Namespace(api_key=None)) == ["from-env"]
    assert api_keys(Namespace(api_key=["a", "b"])) == ["a", "b"]  # flag wins


def test_bearer_auth():
    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        await PlainTextResponse("ok")(scope, receive, send)

    client = TestClient(BearerAuth(app, ["k1", "k2"], credential="admin token"))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
        r = client.get("/anything", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["type"] == "AuthenticationError" and error["code"] == 401
        assert "admin token" in error["message"]
    assert client.get("/", headers={"Authorization": "Bearer k2"}).text == "ok"
    assert client.get("/", headers={"Authorization": "bearer k1"}).text == "ok"
    assert client.options("/").text == "ok"  # CORS preflights carry no token
    with pytest.raises(WebSocketDisconnect) as e:
        client.websocket_connect("/ws").__enter__()
    assert e.value.code == 1008
    with client.websocket_connect("/ws", headers={"Authorization": "Bearer k1"}):
        pass


# ------------------------------------------------------- server flags


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--enable-ssl-refresh"], "--enable-ssl-refresh is not supported"),
        (["--root-path=/api"], "--root-path is not supported"),
        (["--middleware=pkg.Middleware"], "--middleware is not supported"),
        (["--h11-max-header-count=10"], "--h11-max-header-count is not"),
        (["--ssl-keyfile=key.pem"], "--ssl-keyfile needs --ssl-certfile"),
        (["--max-request-body-mb=0"], "not a positive number"),
    ],
)
def test_flags_that_cannot_be_honoured_are_refused(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        serve.parse_cli(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_uvicorn_kwargs():
    args, _, _ = serve.parse_cli(
        [
            "--uvicorn-log-level=warning",
            "--disable-uvicorn-access-log",
            "--h11-max-incomplete-event-size=1000",
            "--disable-access-log-for-endpoints=/health,/metrics",
            "--ssl-certfile=cert.pem",
            "--ssl-keyfile=key.pem",
            "--ssl-ca-certs=ca.pem",
            "--ssl-cert-reqs=2",
        ]
    )
    kwargs = serve.uvicorn_kwargs(args)
    assert kwargs["log_level"] == "warning" and kwargs["access_log"] is False
    assert kwargs["h11_max_incomplete_event_size"] == 1000
    assert "log_config" in kwargs
    assert uvicorn_ssl_kwargs(args) == {
        "ssl_keyfile": "key.pem",
        "ssl_certfile": "cert.pem",
        "ssl_ca_certs": "ca.pem",
        "ssl_cert_reqs": 2,
        "ssl_ciphers": None,
    }


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_flags_reach_uvicorn(tmp_path):
    """The TLS kwargs, given to uvicorn as serve.py does: a real handshake."""
    cert, key = self_signed(tmp_path)
    args, _, _ = serve.parse_cli([f"--ssl-certfile={cert}", f"--ssl-keyfile={key}"])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            PlainTextResponse("over tls"),
            host="127.0.0.1",
            port=port,
            **serve.uvicorn_kwargs(args),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        tls = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/", verify=tls).text == "over tls"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------ a real server

KV_EVENTS = {
    "enable_kv_cache_events": True,
    "publisher": "zmq",
    "endpoint": "tcp://*:5557",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """One worker, llama loaded; the API key only in VLLM_API_KEY; the
    admin token generated into a file."""
    root = tiny_models["llama"].parent  # holds qwen3/, opt/, llama/
    tmp = tmp_path_factory.mktemp("access")
    catalog = write_catalog(
        tmp,
        "models:\n"
        "  trusted:\n"
        f"    model: {tiny_models['qwen3']}\n"
        "    trust_remote_code: true\n"
        "  own-tokenizer:\n"
        f"    model: {tiny_models['opt']}\n"
        "    allow_engine_args: [tokenizer]\n",
    )
    token_file = tmp / "admin-token"
    proc, url = start_server(
        str(tiny_models["llama"]),
        "--num-workers=1",
        "--keep-alive=-1",
        f"--allowed-model-dir={root}",
        f"--model-catalog={catalog}",
        f"--admin-token-file={token_file}",
        env={"VLLM_API_KEY": API_KEY},
    )
    yield url, token_file
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def admin(server):
    _, token_file = server
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    return token_file.read_text().strip()


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["type"] == "AuthenticationError" and error["code"] == 401


MANAGEMENT_ROUTES = [
    ("POST", "/v1/controller/models", 400),  # no body: invalid
    ("DELETE", "/v1/controller/models/nope", None),
    ("POST", "/v1/controller/models/nope/park", None),
    ("POST", "/v1/controller/models/nope/unpark", None),
    ("GET", "/v1/controller/models", 200),
    ("GET", "/v1/controller/workers", 200),
    ("GET", "/v1/controller/nope", 404),
]


@pytest.mark.parametrize("method, path, status", MANAGEMENT_ROUTES)
def test_management_routes_need_the_admin_token(server, admin, method, path, status):
    url, _ = server
    for headers in ({}, bearer("wrong"), bearer(API_KEY)):
        assert_unauthorized(httpx.request(method, url + path, headers=headers))
    r = httpx.request(method, url + path, headers=bearer(admin), json={})
    assert r.status_code != 401, r.text
    assert status is None or r.status_code == status, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["code"] == r.status_code


def test_v1_needs_the_key_from_vllm_api_key(server, admin, tiny_models):
    url, _ = server
    completion = {"model": "llama", "prompt": PROMPT, "max_tokens": 4}
    for headers in ({}, bearer("wrong"), bearer(admin)):
        assert_unauthorized(httpx.get(f"{url}/v1/models", headers=headers))
        assert_unauthorized(
            httpx.post(f"{url}/v1/completions", headers=headers, json=completion)
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
    out = greedy_completion(client, "llama", 8)
    assert out.choices[0].token_ids == hf_greedy(tiny_models["llama"], PROMPT, 8)


def test_health_and_metrics_need_no_key(server):
    """As under `vllm serve`: probes and scrapers carry no key."""
    url, _ = server
    for headers in ({}, bearer(API_KEY)):
        assert httpx.get(f"{url}/health", headers=headers).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers=headers)
        assert metrics.status_code == 200 and "vllm_wc_loads_total" in metrics.text


@pytest.mark.parametrize(
    "model, engine_args, field",
    [
        ("opt", {"tokenizer": "/etc"}, "tokenizer"),
        ("opt", {"allowed_local_media_path": "/"}, "allowed_local_media_path"),
        ("opt", {"kv_events_config": KV_EVENTS}, "kv_events_config"),
        ("opt", {"trust_remote_code": True}, "trust_remote_code"),
        # The entry's trust_remote_code must not run code from elsewhere.
        ("trusted", {"tokenizer": "/etc"}, "tokenizer"),
        # An entry's allow_engine_args opens up those fields only.
        ("own-tokenizer", {"kv_events_config": KV_EVENTS}, "kv_events_config"),
    ],
)
def test_refused_engine_args_change_nothing(
    server, admin, tiny_models, model, engine_args, field
):
    url, _ = server
    api = f"{url}/v1/controller/models"
    before = httpx.get(api, headers=bearer(admin)).json()
    assert [m["name"] for m in before] == ["llama"]
    path = str(tiny_models[model]) if model in tiny_models else model
    r = httpx.post(
        api,
        headers=bearer(admin),
        json={"model": path, "name": "new", "engine_args": engine_args},
        timeout=60,
    )
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["type"] == "PermissionDeniedError" and repr(field) in error["message"]
    assert httpx.get(api, headers=bearer(admin)).json() == before
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
    out = greedy_completion(client, "llama", 4)
    assert out.choices[0].token_ids == hf_greedy(tiny_models["llama"], PROMPT, 4)
