# SPDX-License-Identifier: Apache-2.0
"""The add-on installs into upstream vLLM without shadowing it."""

import subprocess
import sys
import zipfile
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


def test_wheel_has_every_subpackage(tmp_path):
    """A regular (non-editable) install gets every package of the source
    tree, and nothing of upstream's."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
        + ["--no-build-isolation", str(REPO), "-w", str(tmp_path)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    source = REPO / "vllm" / "worker_controller"
    packages = {p.parent.relative_to(REPO) for p in source.rglob("__init__.py")}
    assert {Path(n).parent for n in names if n.endswith("__init__.py")} == packages
    assert all(n.startswith(("vllm/worker_controller/", "vllm_worker")) for n in names)
    # The management CLI's console script.
    (entry_points,) = [n for n in names if n.endswith("/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "vllm-wc = vllm.worker_controller.cli:main" in scripts
