"""vllm-worker-controller: a warm worker pool, installed as vllm.worker_controller.

Only our subpackages are listed (never ``vllm`` itself), so setuptools'
editable install maps ``vllm.worker_controller`` next to upstream's regular
``vllm`` package instead of shadowing it.
"""

from setuptools import find_namespace_packages, setup

setup(
    name="vllm-worker-controller",
    version="0.1.0",
    description="Warm worker pool for vLLM: load, serve and unload models in place",
    python_requires=">=3.10",
    # Every subpackage of ours, found rather than listed: a listed set once
    # left compat/ out of wheels (editable installs did not show it).
    packages=find_namespace_packages(
        include=["vllm.worker_controller*"], exclude=["*.__pycache__"]
    ),
    entry_points={
        "console_scripts": ["vllm-wc=vllm.worker_controller.cli:main"],
        # Run by vLLM in each of its processes: registers --load-format wc_peer
        # (a peer's weights instead of the checkpoint's), also for `vllm serve`.
        "vllm.general_plugins": [
            "worker_controller_peer_loader = vllm.worker_controller.plugin:register"
        ],
    },
)
