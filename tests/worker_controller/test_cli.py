# SPDX-License-Identifier: Apache-2.0
"""``vllm-wc`` against a real server: tables and ``--json``, load / park /
unpark / unload, the admin token from flag, environment or the server's
token file, and what it says when the server is down or the token wrong."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.worker_controller.test_serve import free_port, start_server, stop_server
from vllm.platforms import current_platform
from vllm.worker_controller import cli

NAME = "qwen3"
DURATION = r"(\d+(\.\d)?s|\d+m\d\ds|\d+h\d\dm)"
MEMORY = r"\d+(\.\d)? (B|KiB|MiB|GiB)"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """One worker, the tiny models' folder allowed; no --admin-token, so the
    server generates one into its cache directory, where the CLI finds it."""
    cache = tmp_path_factory.mktemp("cli-cache")
    proc, url = start_server(
        str(tiny_models[NAME]),
        f"--allowed-model-dir={tiny_models[NAME].parent}",
        "--num-workers=1",
        env={"VLLM_WC_CACHE_DIR": str(cache)},
    )
    yield url, cache
    stop_server(proc)


@pytest.fixture
def wc(server, monkeypatch, capsys):
    """``wc(*argv)`` -> (exit status, stdout, stderr) of the CLI, in this
    process, pointed at the server by the environment as a user would."""
    url, cache = server
    monkeypatch.setenv(cli.URL_ENV, url)
    monkeypatch.setenv("VLLM_WC_CACHE_DIR", str(cache))
    for name in (cli.TOKEN_ENV, cli.TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        status = cli.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def rows(table: str) -> dict[str, str]:
    """A table's lines by their first cell, the header's under 'header'."""
    lines = table.strip().splitlines()
    return {"header": lines[0], **{line.split()[0]: line for line in lines[1:]}}


def test_ps_and_workers(wc, server):
    status, out, err = wc("ps")
    assert status == 0, err
    table = rows(out)
    assert table["header"].split() == [
        *("NAME", "STATE", "REPLICAS", "DEVICE", "MEMORY", "IDLE", "LAST", "LOAD"),
        "MODEL",
    ]
    assert re.fullmatch(
        rf"{NAME} +ready +1 +cpu +{MEMORY} +{DURATION} +load {DURATION} +/\S+/{NAME}",
        table[NAME],
    ), table[NAME]

    status, out, _ = wc("ps", "--json")
    assert status == 0
    (model,) = [m for m in json.loads(out) if m["name"] == NAME]
    assert model["state"] == "ready" and model["devices"] == ["cpu"]
    assert model["memory_bytes"] > 0 and model["idle_s"] >= 0
    assert model["brought_up"] == "load" and model["timings_s"]["total"] > 0
    # Those figures only on request: the plain listing stays comparable.
    url, cache = server
    token = (cache / f"admin-token-{url.rsplit(':', 1)[1]}").read_text().strip()
    plain = httpx.get(
        f"{url}/v1/controller/models", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert not {"idle_s", "memory_bytes", "devices"} & set(plain[0])

    status, out, _ = wc("workers")
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == [
        *("KIND", "INDEX", "PID", "DEVICE", "STATE", "MODEL", "MEMORY", "BOOT")
    ]
    kinds = sorted(line.split()[0] for line in lines[1:])
    assert kinds == ["engine_host", "worker"]
    assert all(line.split()[4:6] == ["leased", NAME] for line in lines[1:]), out
    status, out, _ = wc("workers", "--json")
    assert status == 0 and {w["model"] for w in json.loads(out)} == {NAME}


def test_load_park_unpark_unload(wc, server, tiny_models, tmp_path):
    url, _ = server
    status, out, err = wc(
        "load",
        str(tiny_models[NAME]),
        "--name=cli-model",
        "--engine-arg",
        "max-model-len=128",
    )
    assert status == 0, err
    assert re.match(r"Loaded cli-model \((load|swap)\) in \d+\.\d s: config ", out)
    _, out, _ = wc("ps", "--json")
    (model,) = [m for m in json.loads(out) if m["name"] == "cli-model"]
    assert model["state"] == "ready" and model["max_model_len"] == 128
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": "cli-model", "prompt": "Hello", "max_tokens": 2},
        timeout=300,
    )
    assert r.status_code == 200, r.text

    if current_platform.is_sleep_mode_available():  # GPU
        assert wc("park", "cli-model")[0] == 0
        assert wc("unpark", "cli-model")[0] == 0
    else:  # CPU has no sleep mode: refused, with why
        status, _, err = wc("park", "cli-model")
        assert status == 1 and "409 ConflictError" in err and "sleep mode" in err
        status, _, err = wc("unpark", "cli-model")
        assert status == 1 and "409 ConflictError" in err and "not parked" in err

    status, out, _ = wc("unload", "cli-model")
    assert status == 0 and out.strip() == "Unloaded cli-model"
    status, _, err = wc("unload", "cli-model")
    assert status == 1 and "404 NotFoundError" in err and "cli-model" in err

    # Refused before anything is evicted or loaded, with the reason.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    status, _, err = wc("load", str(outside))
    assert status == 1 and "403 PermissionDeniedError" in err, err
    status, _, err = wc("load", str(tiny_models[NAME]), "--engine-arg=tokenizer=/x")
    assert status == 1 and "403 PermissionDeniedError" in err and "tokenizer" in err


def test_clear_errors(wc, server, tmp_path, monkeypatch):
    url, cache = server
    down = f"http://127.0.0.1:{free_port()}"
    status, out, err = wc("--url", down, "ps")
    assert status == cli.EXIT_UNREACHABLE and not out
    assert f"cannot reach the server at {down}" in err and "running" in err

    status, _, err = wc("ps", "--admin-token=wrong")
    assert status == 1 and "refused the admin token (from --admin-token)" in err

    monkeypatch.setenv(cli.TOKEN_ENV, "wrong")  # the environment beats the file
    status, _, err = wc("ps")
    assert status == 1 and f"(from ${cli.TOKEN_ENV})" in err
    monkeypatch.delenv(cli.TOKEN_ENV)

    monkeypatch.setenv("VLLM_WC_CACHE_DIR", str(tmp_path))  # no token file there
    status, _, err = wc("ps")
    port = url.rsplit(":", 1)[1]
    assert status == 1 and "wants its admin token and none was found" in err
    assert str(tmp_path / f"admin-token-{port}") in err

    token_file = tmp_path / "token"
    token_file.write_text((cache / f"admin-token-{port}").read_text())
    assert wc("ps", f"--admin-token-file={token_file}")[0] == 0
    monkeypatch.setenv(cli.TOKEN_FILE_ENV, str(token_file))
    assert wc("ps")[0] == 0

    with pytest.raises(SystemExit) as usage:
        wc("load")  # no model: argparse's usage error
    assert usage.value.code == cli.EXIT_USAGE
    assert wc("--url=ftp://host", "ps")[0] == cli.EXIT_USAGE
    assert wc("load", "x", "--engine-arg=novalue")[0] == cli.EXIT_USAGE


def test_console_script_and_module(server):
    """The installed ``vllm-wc`` and ``python -m vllm.worker_controller.cli``,
    as separate processes (the token from the server's file)."""
    url, cache = server
    env = {**os.environ, "VLLM_WC_URL": url, "VLLM_WC_CACHE_DIR": str(cache)}
    script = str(Path(sys.executable).with_name("vllm-wc"))
    module = [sys.executable, "-m", "vllm.worker_controller.cli"]
    for command in ([script], module):
        done = subprocess.run(
            [*command, "workers", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        kinds = {w["kind"] for w in json.loads(done.stdout)}
        assert kinds == {"worker", "engine_host"}, done.stdout
