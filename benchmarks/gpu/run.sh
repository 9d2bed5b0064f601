#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Driver of the GPU benchmarks: one STAGE per device command (each within
# the 10-minute limit), results accumulating under $BENCH_DIR (/tmp/bench).
#
# usage: bash benchmarks/gpu/run.sh STAGE [STAGE ...]
#
# First install the runtime (shared/gpu/README.md):
#   command 1: bash .gpurt/a/setup-runtime.sh a
#   command 2: bash .gpurt/b/setup-runtime.sh b && bash benchmarks/gpu/run.sh check models
#
# Stages (wall time on one H200, 2026-11-21 / 12-02; "est.": estimated):
#   check          GPU, versions, disk, memory                          ~0.5 min
#   models         random-weight models of $SHAPES (Qwen3-0.6B 1.2 GB,
#                  Llama-3.1-8B 16 GB), offline tokenizer                ~1-2 min
#   startup-qwen   bench_startup.py, Qwen3-0.6B shape, N=$RUNS, $SCENARIOS:
#                  ~10-11 min (two calls: 6.8 + 3 min)
#   startup-llama  the same, Llama-3.1-8B shape: ~18-20 min (3 calls)
#   parity         bench_parity.py, Qwen3-0.6B: `vllm bench serve`, $PROMPTS
#                  prompts at $CONCURRENCY per side of $SIDES
#                  (stock, controller, swapped, fewgraphs)  ~2.5 min a side
#   leak           gpu_lifecycle.py, $CYCLES (6) cycles of two small models
#                  without sleep mode, with it, with it and eager     ~6-8 min
#   drift          gpu_lifecycle.py, 20 cycles parking, stock tokens  ~7.5 min
#   unpark-kv      gpu_lifecycle.py, 2 park cycles, KV cache 2/8/32 GiB ~3 min
#   tp2            gpu_lifecycle.py, tensor_parallel_size 2 (2 GPUs);
#                  CYCLES=2 on a fresh 2 x H200 ~8 min
#   rel-churn      gpu_reliability.py --scenario churn: two servers (max1,
#                  fewworkers), ~3.5-5 min each (est.); called again, it
#                  resumes; REL_ARGS="--churn-runs max1" runs one
#   rel-kill       SIGKILL of rel-a's worker, then of its engine host, under
#                  load                                      ~5-7 min (est.)
#   rel-cold3      200 requests over three models not loaded yet; 3.9 min
#                  (rel-*: the qwen3-0.6b model only: SHAPES=qwen3-0.6b)
#   smoke, rel-smoke  CPU development machine only: startup and parity, then
#                  the reliability scenarios, on a tiny model
# A stage reaching its deadline ($DEADLINE_S, 510 s) writes what it has and
# exits 3 ("NOT DONE"): call it again to continue. Every stage copies its
# result JSONs into $OUT (what the device tool returns), plus $OUT/STAGE.log
# and $OUT/logs-STAGE.tgz.
#
# Environment (defaults): BENCH_DIR, CONCURRENCY (1,32), CYCLES, DEADLINE_S,
# RUNS (3), PARK_GB (the controller's --park-memory-gb, 48: its own default,
# half of MemTotal, can read low where memory grows on use), PYTHON
# (python3), PROMPTS (200), SCENARIOS (startup, comma-separated; all),
# SHAPES (qwen3-0.6b,llama-3.1-8b), SIDES (stock,controller), REL_ARGS (more
# gpu_reliability.py flags).
set -uo pipefail
[ $# -ge 1 ] || { awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"; exit 2; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH="${BENCH_DIR:-/tmp/bench}"
OUT="${OUT:-$BENCH/out}"
DEADLINE_S="${DEADLINE_S:-510}"
PY="${PYTHON:-python3}"
mkdir -p "$BENCH/models" "$BENCH/results" "$BENCH/logs" "$OUT"

# The compact vLLM runtime (shared/gpu/README.md), our subpackage in it.
if [ -d /opt/rt/site/vllm ]; then
    case ":${PYTHONPATH:-}:" in *:/opt/rt/site:*) ;; *) export PYTHONPATH="/opt/rt/site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    ln -sfn "$ROOT/vllm/worker_controller" /opt/rt/site/vllm/worker_controller
fi
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$ROOT" || exit 1

# One date for every stage: a stage resumes its results file by name.
[ -s "$BENCH/date" ] || date -u +%F > "$BENCH/date"
DATE="$(cat "$BENCH/date")"

# A Python stage; SIGTERM (it stops its servers, writes its results) a
# minute after its own deadline.
bench() {
    timeout -k 30 "$((DEADLINE_S + 60))" "$PY" "$@" --deadline-s "$DEADLINE_S" \
        --models-dir "$BENCH/models" --results-dir "$BENCH/results" \
        --log-dir "$BENCH/logs" --mirror-dir "$OUT" --date "$DATE"
}

# gpu_lifecycle.py as variant NAME (in the file name) with ARGS; stock
# reference tokens only with --with-stock.
lifecycle() {
    local name="$1" stock=(--no-stock) gpu
    shift
    [ "${1:-}" = --with-stock ] && { stock=(); shift; }
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE '[ahbl][0-9]+s?' | head -1 | tr A-Z a-z)
    timeout -k 30 "$DEADLINE_S" "$PY" benchmarks/gpu_lifecycle.py "${stock[@]}" \
        --cycles "${CYCLES:-6}" --models-dir "$BENCH/lifecycle-models" \
        --out "$BENCH/results/gpu-lifecycle-$name-${gpu:-gpu}-$DATE.json" "$@"
}

run_stage() {
    local stage="$1" rc=0
    echo "=== stage $stage ($(date -u +%H:%M:%S) UTC) ==="
    case "$stage" in
    check)
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
        "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
        "$PY" -c 'import importlib.metadata as m, vllm.worker_controller.serve; print("vllm", m.version("vllm"))'
        df -h "$BENCH" | tail -1
        free -g | head -2
        ;;
    models)
        "$PY" benchmarks/gpu_common.py make-models --models-dir "$BENCH/models" \
            --shapes "${SHAPES:-qwen3-0.6b,llama-3.1-8b}" || rc=$?
        du -sh "$BENCH"/models/* 2>/dev/null
        ;;
    startup-qwen | startup-llama)
        local model=qwen3-0.6b all=stock_serve,stock_llm,ctrl_new,ctrl_swap,ctrl_swap_cached,ctrl_new_arch,ctrl_reload,ctrl_unpark,sleep_wake
        [ "$stage" = startup-llama ] && model=llama-3.1-8b
        bench benchmarks/bench_startup.py --models "$model" --runs "${RUNS:-3}" \
            --scenarios "${SCENARIOS:-$all}" --park-memory-gb "${PARK_GB:-48}" || rc=$?
        ;;
    parity)
        bench benchmarks/bench_parity.py --model qwen3-0.6b --num-prompts "${PROMPTS:-200}" \
            --concurrency "${CONCURRENCY:-1,32}" --sides "${SIDES:-stock,controller}" || rc=$?
        ;;
    leak)
        # Where the driver-level drift per load comes from: the lifecycle
        # without sleep mode, with it (never parked), with it but eager.
        lifecycle nosleep --no-park --engine-args '{"enable_sleep_mode": false}' || rc=$?
        lifecycle sleep --no-park || rc=$?
        lifecycle sleep-eager --no-park --engine-args '{"enforce_eager": true}' || rc=$?
        ;;
    drift)
        # The memory-drift target: 20 cycles with vLLM's defaults, parking.
        lifecycle drift --with-stock --cycles 20 || rc=$?
        ;;
    unpark-kv)
        # Unpark time against the KV cache size it re-maps.
        for gib in 2 8 32; do
            lifecycle "park-kv${gib}g" --cycles 2 --models qwen3-0.6b \
                --engine-args "{\"kv_cache_memory_bytes\": $((gib << 30))}" || rc=$?
        done
        ;;
    tp2)
        # Two ranks in two pooled processes; tokens against stock TP=2.
        lifecycle tp2 --with-stock --engine-args '{"tensor_parallel_size": 2}' || rc=$?
        ;;
    rel-churn | rel-kill | rel-cold3)
        # Reliability under churn / kills / a cold start of three models:
        # every answer counted (gpu_reliability.py).
        # shellcheck disable=SC2086  # REL_ARGS: more flags, word-split
        bench benchmarks/gpu_reliability.py --scenario "${stage#rel-}" \
            --park-memory-gb "${PARK_GB:-48}" ${REL_ARGS:-} || rc=$?
        ;;
    smoke)
        # CPU development machine only: both benchmarks on a tiny model.
        export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_CPU_CI_ENV=1
        local tiny='{"max_model_len": 512, "enforce_eager": true}'
        bench benchmarks/bench_startup.py --models tiny-qwen3 --runs 1 \
            --num-workers 1 --engine-args "$tiny" || rc=$?
        bench benchmarks/bench_parity.py --model tiny-qwen3 --num-prompts 8 --swaps 2 \
            --concurrency 1,4 --input-len 64 --output-len 16 --engine-args "$tiny" \
            --sides stock,controller,swapped,fewgraphs || rc=$?
        ;;
    rel-smoke)
        # CPU development machine only: the reliability scenarios, tiny.
        bench benchmarks/gpu_reliability.py --smoke --scenario churn,kill,cold3 \
            --churn-runs fewworkers || rc=$?
        ;;
    *)
        echo "unknown stage $stage (see: bash $0)" >&2
        return 2
        ;;
    esac
    cp "$BENCH"/results/*.json "$OUT"/ 2>/dev/null
    tar czf "$OUT/logs-$stage.tgz" -C "$BENCH" logs 2>/dev/null
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
