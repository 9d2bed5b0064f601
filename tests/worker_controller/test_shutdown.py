# SPDX-License-Identifier: Apache-2.0
"""``shutdown()`` leaves no process behind (a controller of its own, in a
subprocess, so that the session pool is not involved)."""

import json
import subprocess
import sys
import textwrap
import time

import psutil

from tests.worker_controller.conftest import TINY_ARGS

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import psutil
    from vllm.worker_controller import WorkerController

    if __name__ == "__main__":
        with WorkerController(num_workers=1) as wc:
            wc.load(sys.argv[1], name="m", **json.loads(sys.argv[2]))
            pids = [w["pid"] for w in wc.list_workers()]
            children = [
                p.pid
                for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())
            ]
        # Still loaded at shutdown: shutdown() must unload it first.
        print("PIDS " + json.dumps({"pool": pids, "children": children}))
    """
)


def test_shutdown_leaves_no_process(tiny_models, tmp_path):
    script = tmp_path / "run_controller.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tiny_models["llama"]), json.dumps(TINY_ARGS)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    pids = json.loads(next(x for x in out.splitlines() if x.startswith("PIDS "))[5:])
    assert len(pids["pool"]) == 2  # one worker, one engine host
    assert set(pids["pool"]) <= set(pids["children"])
    deadline = time.monotonic() + 10
    while alive := [p for p in pids["children"] if _running(p)]:
        assert time.monotonic() < deadline, f"left behind: {alive}"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
