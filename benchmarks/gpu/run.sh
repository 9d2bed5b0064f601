#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Driver of the GPU benchmarks: one STAGE per device command (each must end
# within the 10-minute limit of one command), results accumulating on the
# machine under $BENCH_DIR (default /tmp/bench) between commands.
#
# usage: bash benchmarks/gpu/run.sh STAGE [STAGE ...]
#
# Before the first stage, install the runtime (shared/gpu/README.md):
#   command 1: bash .gpurt/a/setup-runtime.sh a
#   command 2: bash .gpurt/b/setup-runtime.sh b && bash benchmarks/gpu/run.sh check models
#
# Stages and their expected wall time on one H100/H200 (estimates, from
# docs/benchmarks.md and shared/gpu/README.md: `vllm serve` of the 0.6B
# shape ~35 s to the first completion with a warm compile cache, ~80 s
# without; the 8B shape ~60-100 s; a first compile on a fresh machine
# ~70 s more):
#   check          GPU, versions, disk, memory                        ~0.5 min
#   models         random-weight Qwen3-0.6B (1.2 GB) and Llama-3.1-8B (16 GB)
#                  shapes ($SHAPES) with a trained BPE tokenizer; skipped
#                  when present                                        ~1-2 min
#   startup-qwen   bench_startup.py, Qwen3-0.6B shape, N=3, 7 scenarios:
#                  controller boot + first load (first compile) ~1.2 min;
#                  per repetition ~2.5 min (stock_serve ~40-60 s, stock_llm
#                  ~25-30 s, ctrl_new ~12 s, ctrl_new_arch ~25 s: a new
#                  config compiles, ctrl_reload ~10 s, ctrl_unpark ~3 s,
#                  unloads, waits); sleep_wake ~1 min. ~10-11 min in all:
#                  call 1 stops at its deadline, call 2 ends it (measured
#                  2026-11-21 on an H200: 6.8 + 3 min)
#   startup-llama  the same for the Llama-3.1-8B shape: boot ~2.5 min, per
#                  repetition ~4.5-5 min, sleep_wake ~2 min: ~18-20 min, i.e.
#                  3 calls. Without stock_llm and sleep_wake
#                  (SCENARIOS=stock_serve,ctrl_new,ctrl_reload,ctrl_unpark)
#                  ~13 min, 2 calls
#   parity         bench_parity.py, Qwen3-0.6B shape: stock `vllm serve`,
#                  then the controller; `vllm bench serve`, 200 prompts at
#                  concurrency 1 (~80 s) and 32 (~10 s) on each side  ~5 min
#   leak           gpu_lifecycle.py, $CYCLES (default 6) load / generate /
#                  unload cycles of two small models, three times: without
#                  sleep mode, with it, with it and eager; the worker's
#                  driver-level memory after each unload       ~6-8 min
#   drift          gpu_lifecycle.py, 20 cycles with parking (sleep mode
#                  on), tokens against stock: the worker's driver-level
#                  memory after each unload over 20 cycles  ~7.5 min (measured)
#   unpark-kv      gpu_lifecycle.py, 2 park cycles of the Qwen3-0.6B shape
#                  with a KV cache of 2, 8 and 32 GiB                 ~3 min
#   tp2            gpu_lifecycle.py, $CYCLES cycles with tensor_parallel_size
#                  2 (two pooled workers; needs 2 GPUs), tokens against stock
#                  TP=2; on a fresh 2 x H200 ~8 min with CYCLES=2 (first
#                  compiles at TP=2; measured 2026-11-21), ~5 min warm
#   rel-churn      gpu_reliability.py --scenario churn: `vllm bench serve`
#                  (1000 prompts, concurrency 32) to rel-a while side clients
#                  and the management API churn rel-b / rel-c (copies of the
#                  Qwen3-0.6B shape); two servers, each ~3.5-5 min (estimate):
#                  --max-loaded-models 1 (3 workers), then 2 workers for 3
#                  models. If the first leaves too little of $DEADLINE_S for
#                  the second, exit 3: call rel-churn again (it resumes);
#                  REL_ARGS="--churn-runs max1" runs one
#   rel-kill       gpu_reliability.py --scenario kill: SIGKILL rel-a's pooled
#                  worker, then its engine host, while the bench streams to
#                  it; in-flight answers, reload, rel-b's errors, pool refill
#                                                  ~5-7 min (estimate), 1 call
#   rel-cold3      gpu_reliability.py --scenario cold3: 200 concurrent requests
#                  over three models not yet loaded (3 workers, one GPU,
#                  --gpu-memory-utilization 0.25); on a fresh H200 3.9 min
#                  (server 54 s, last answer 161 s: the three loads run one
#                  after another, the first compiles; stop 18 s; measured
#                  2026-12-02), ~2.5 min with a warm compile cache
#                  (the rel-* stages need the models stage's qwen3-0.6b only:
#                  SHAPES=qwen3-0.6b; a stage that stops at its deadline
#                  resumes with the runs it has not done when called again)
#   results        copy every result JSON and the logs to $OUT        ~0.1 min
# Everything: ~40 min of device time. In ~25 min: check+models (Qwen only),
# startup-qwen twice, parity (~20 min), then startup-llama as far as it gets.
# A stage that reaches its deadline ($DEADLINE_S, default 510 s of
# benchmark time) stops before the next run, writes what it has and exits 3
# ("NOT DONE"): call the same stage again to continue. Exit 0: done.
#
# Every stage copies the result JSONs into $OUT (what the device tool
# returns; at most 8 files) as it goes, plus $OUT/STAGE.log and, at the end,
# $OUT/logs-STAGE.tgz (server logs).
#
# Environment: BENCH_DIR, CYCLES, DEADLINE_S, RUNS (default 3), PARK_GB (the
# controller's --park-memory-gb, default 48: the controller's own default,
# half of MemTotal, can read low on a machine whose memory grows on use),
# PYTHON (default python3), PROMPTS (parity, default 200), SCENARIOS
# (startup stages; default all six, comma-separated), SHAPES (models stage;
# default qwen3-0.6b,llama-3.1-8b), ENGINE_ARGS (JSON of EngineArgs fields
# for every side; default max_model_len 4096 and `vllm serve`'s H100 batch
# defaults, see gpu_common.DEFAULT_ENGINE_ARGS; the rel-* stages' default
# is the same plus dtype bfloat16), REL_ARGS (rel-* stages: more gpu_reliability.py flags, e.g.
# "--churn-runs max1" or "--num-prompts 2000").
set -uo pipefail
[ $# -ge 1 ] || { awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"; exit 2; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="${BENCH_DIR:-/tmp/bench}"
OUT="${OUT:-$BENCH/out}"
DEADLINE_S="${DEADLINE_S:-510}"
RUNS="${RUNS:-3}"
PARK_GB="${PARK_GB:-48}"
PROMPTS="${PROMPTS:-200}"
SCENARIOS="${SCENARIOS:-stock_serve,stock_llm,ctrl_new,ctrl_swap,ctrl_new_arch,ctrl_reload,ctrl_unpark,sleep_wake}"
SHAPES="${SHAPES:-qwen3-0.6b,llama-3.1-8b}"
ENGINE=()
[ -n "${ENGINE_ARGS:-}" ] && ENGINE=(--engine-args "$ENGINE_ARGS")
PY="${PYTHON:-python3}"
mkdir -p "$BENCH/models" "$BENCH/results" "$BENCH/logs" "$OUT"

# The compact vLLM runtime (shared/gpu/README.md) and our subpackage in it.
if [ -d /opt/rt/site/vllm ]; then
    case ":${PYTHONPATH:-}:" in *:/opt/rt/site:*) ;; *) export PYTHONPATH="/opt/rt/site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    ln -sfn "$ROOT/vllm/worker_controller" /opt/rt/site/vllm/worker_controller
fi
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$ROOT" || exit 1

# One date for every stage on this machine: a stage resumes its results
# file by name, also when it is called again after midnight.
[ -s "$BENCH/date" ] || date -u +%F > "$BENCH/date"
COMMON=(--models-dir "$BENCH/models" --results-dir "$BENCH/results"
        --log-dir "$BENCH/logs" --mirror-dir "$OUT" --date "$(cat "$BENCH/date")")

# A Python stage, stopped by SIGTERM (it then stops its servers and writes
# its results) if it overruns its own deadline by a minute.
bench() {
    timeout -k 30 "$((DEADLINE_S + 60))" "$PY" "$@" --deadline-s "$DEADLINE_S" "${COMMON[@]}"
}

# gpu_lifecycle.py as variant NAME (the results file's name) with ARGS;
# without --with-stock it skips the stock reference tokens.
lifecycle() {
    local name="$1" stock=(--no-stock)
    shift
    [ "${1:-}" = --with-stock ] && { stock=(); shift; }
    local gpu
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE '[ahbl][0-9]+s?' | head -1 | tr A-Z a-z)
    timeout -k 30 "$DEADLINE_S" "$PY" benchmarks/gpu_lifecycle.py "${stock[@]}" \
        --cycles "${CYCLES:-6}" --models-dir "$BENCH/lifecycle-models" \
        --out "$BENCH/results/gpu-lifecycle-$name-${gpu:-gpu}-$(cat "$BENCH/date").json" "$@"
}

collect() {
    cp "$BENCH"/results/*.json "$OUT"/ 2>/dev/null
    tar czf "$OUT/logs-$1.tgz" -C "$BENCH" logs 2>/dev/null
    ls -la "$OUT"
}

run_stage() {
    local stage="$1" rc=0
    echo "=== stage $stage ($(date -u +%H:%M:%S) UTC) ==="
    case "$stage" in
    check)
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
        "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
        "$PY" -c 'import importlib.metadata as m; print("vllm", m.version("vllm"))'
        "$PY" -c 'import vllm.worker_controller.serve, aiohttp; print("vllm.worker_controller.serve imports")'
        df -h "$BENCH" | tail -1
        free -g | head -2
        ;;
    models)
        "$PY" benchmarks/gpu_common.py make-models --models-dir "$BENCH/models" \
            --shapes "$SHAPES" || rc=$?
        du -sh "$BENCH"/models/* 2>/dev/null
        ;;
    startup-qwen)
        bench benchmarks/bench_startup.py --models qwen3-0.6b --runs "$RUNS" \
            --scenarios "$SCENARIOS" --park-memory-gb "$PARK_GB" ${ENGINE[@]+"${ENGINE[@]}"} || rc=$?
        collect "$stage"
        ;;
    startup-llama)
        bench benchmarks/bench_startup.py --models llama-3.1-8b --runs "$RUNS" \
            --scenarios "$SCENARIOS" --park-memory-gb "$PARK_GB" ${ENGINE[@]+"${ENGINE[@]}"} || rc=$?
        collect "$stage"
        ;;
    parity)
        bench benchmarks/bench_parity.py --model qwen3-0.6b --num-prompts "$PROMPTS" \
            --concurrency 1,32 ${ENGINE[@]+"${ENGINE[@]}"} || rc=$?
        collect "$stage"
        ;;
    leak)
        # Where the driver-level drift per load comes from: the lifecycle
        # without sleep mode, with it (never parked), with it but eager.
        lifecycle nosleep --no-park --engine-args '{"enable_sleep_mode": false}' || rc=$?
        lifecycle sleep --no-park || rc=$?
        lifecycle sleep-eager --no-park --engine-args '{"enforce_eager": true}' || rc=$?
        collect "$stage"
        ;;
    drift)
        # The memory-drift target: 20 cycles with vLLM's defaults, parking.
        lifecycle drift --with-stock --cycles 20 || rc=$?
        collect "$stage"
        ;;
    unpark-kv)
        # Unpark time against the KV cache size it re-maps.
        for gib in 2 8 32; do
            lifecycle "park-kv${gib}g" --cycles 2 --models qwen3-0.6b \
                --engine-args "{\"kv_cache_memory_bytes\": $((gib << 30))}" || rc=$?
        done
        collect "$stage"
        ;;
    tp2)
        # Two ranks in two pooled processes; tokens against stock TP=2.
        lifecycle tp2 --with-stock --engine-args '{"tensor_parallel_size": 2}' || rc=$?
        collect "$stage"
        ;;
    rel-churn | rel-kill | rel-cold3)
        # Reliability under churn / kills / a cold start of three models:
        # every answer counted (gpu_reliability.py).
        # shellcheck disable=SC2086  # REL_ARGS: more flags, word-split
        bench benchmarks/gpu_reliability.py --scenario "${stage#rel-}" \
            --park-memory-gb "$PARK_GB" ${ENGINE[@]+"${ENGINE[@]}"} ${REL_ARGS:-} || rc=$?
        collect "$stage"
        ;;
    results)
        collect "$stage"
        ;;
    smoke)
        # CPU development machine only: both benchmarks on a tiny model.
        export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_CPU_CI_ENV=1
        local tiny='{"max_model_len": 512, "enforce_eager": true}'
        bench benchmarks/bench_startup.py --models tiny-qwen3 --runs 1 \
            --num-workers 1 --engine-args "$tiny" || rc=$?
        bench benchmarks/bench_parity.py --model tiny-qwen3 --num-prompts 8 \
            --concurrency 1,4 --input-len 64 --output-len 16 --engine-args "$tiny" || rc=$?
        collect "$stage"
        ;;
    rel-smoke)
        # CPU development machine only: the reliability scenarios, tiny.
        bench benchmarks/gpu_reliability.py --smoke --scenario churn,kill,cold3 \
            --churn-runs fewworkers || rc=$?
        collect "$stage"
        ;;
    *)
        echo "unknown stage $stage (check, models, startup-qwen, startup-llama, parity, leak, drift, unpark-kv, tp2, rel-churn, rel-kill, rel-cold3, results, smoke, rel-smoke)" >&2
        return 2
        ;;
    esac
    echo "=== stage $stage: exit $rc ($(date -u +%H:%M:%S) UTC) ==="
    return "$rc"
}

status=0
for stage in "$@"; do
    run_stage "$stage" 2>&1 | tee -a "$OUT/$stage.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && status=$rc
done
exit "$status"
