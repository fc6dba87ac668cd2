#!/usr/bin/env bash
# GPU check of convlstm's fast paths: the CUDA tests, then the benchmark on the 16x16 / hidden-128
# workload (w16) and the main-job shape, eager and compiled (CUDA graphs), then one minute of the
# main job's training on the GPU. About 3.5 minutes on an H200, at most 8 (the step timeouts add
# up to 470 s); every step writes its results as it goes.
#
# Usage, from the repository root, with a Python that has torch+CUDA (and pytest):
#     OUT=/path/to/results bash benchmarks/gpu_check.sh
# The package is used from src/ (PYTHONPATH), so nothing needs installing. Results in $OUT:
# gpu_check.log (everything), gpu_tests.xml, bench_eager.json, bench_compiled.json,
# train_metrics.jsonl and train_report.json (the training run's), summary.txt.
set -x
set -u
set -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
status=0
TMPDIR_TRAIN=$(mktemp -d)
step() {  # step NAME SECONDS COMMAND...: run with a timeout, record its exit code, carry on
    local name=$1 seconds=$2
    shift 2
    echo "=== $name (timeout ${seconds}s) $(date +%T)"
    timeout --kill-after=10 "$seconds" "$@"
    local rc=$?
    echo "=== $name: exit $rc $(date +%T)"
    echo "$name: exit $rc" >>"$OUT/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

step environment 30 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))'"
step gpu_tests 100 "$PY" -m pytest -q -m gpu tests/test_fast_paths.py -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml"
step bench_eager 80 "$PY" benchmarks/bench.py --device cuda --shapes w16 main_job \
    --no-compile --rounds 10 --json "$OUT/bench_eager.json"
step bench_compiled 140 "$PY" benchmarks/bench.py --device cuda --shapes w16 main_job \
    --variants naive floor convlstm convlstm_compiled --no-memory --rounds 10 \
    --json "$OUT/bench_compiled.json"
step train 120 "$PY" -m convlstm.cli train --out "$TMPDIR_TRAIN" --overwrite run.device=cuda \
    run.max_minutes=1 run.eval_samples=256 run.progress=false
cp "$TMPDIR_TRAIN/metrics.jsonl" "$OUT/train_metrics.jsonl"
cp "$TMPDIR_TRAIN/report/metrics.json" "$OUT/train_report.json"
echo "overall: exit $status" | tee -a "$OUT/summary.txt"
exit "$status"
