"""vllm-worker-controller: a warm worker pool, installed as vllm.worker_controller.

Only our subpackages are listed (never ``vllm`` itself), so setuptools'
editable install maps ``vllm.worker_controller`` next to upstream's regular
``vllm`` package instead of shadowing it.
"""

from setuptools import setup

setup(
    name="vllm-worker-controller",
    version="0.1.0",
    description="Warm worker pool for vLLM: load, serve and unload models in place",
    python_requires=">=3.10",
    packages=[
        "vllm.worker_controller",
        "vllm.worker_controller.engine",
        "vllm.worker_controller.executor",
        "vllm.worker_controller.worker",
    ],
)
