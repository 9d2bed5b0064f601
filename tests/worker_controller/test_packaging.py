# SPDX-License-Identifier: Apache-2.0
"""The add-on installs into upstream vLLM without shadowing it."""

import subprocess
import sys
from pathlib import Path

import vllm
import vllm.worker_controller

REPO = Path(__file__).resolve().parents[2]


def test_vllm_is_upstream_and_subpackage_is_ours():
    assert "site-packages" in vllm.__file__
    assert Path(vllm.worker_controller.__file__).is_relative_to(REPO)


def test_serve_help():
    out = subprocess.run(
        [sys.executable, "-m", "vllm.worker_controller.serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "--num-workers" in out


def test_repo_tracks_no_upstream_files():
    tracked = subprocess.run(
        ["git", "ls-files", "vllm"], capture_output=True, text=True, cwd=REPO
    ).stdout.split()
    if not tracked:  # not a git checkout (e.g. an sdist)
        return
    assert all(f.startswith("vllm/worker_controller/") for f in tracked)
