# SPDX-License-Identifier: Apache-2.0
"""Where this package keeps files between runs: converted demo models and
the server's generated admin token.

Standard library only: the CLI (``cli.py``) reads the token file through
it and should not pay for torch's import.
"""

import os
from pathlib import Path

CACHE_ENV = "VLLM_WC_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$VLLM_WC_CACHE_DIR``, else ``~/.cache/vllm-worker-controller``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "vllm-worker-controller"


def admin_token_path(port: int) -> Path:
    """Where a server on ``port`` writes the admin token it generated
    (one file per port: several servers may run on one machine)."""
    return default_cache_dir() / f"admin-token-{port}"
