#!/usr/bin/env bash
# Every GPU measurement that issues 3, 4 and 5 ask for, in one device call of about 8.5 minutes.
#
# Prepare here:   bash scripts/gpu_wheels.sh          (the missing packages, into .whl/)
# On the device:  the `run` tool with carry [".whl"] and the command
#                 bash scripts/gpu_checks.sh           (timeout_s 600)
# Check it here:  DEVICE=cpu QUICK=1 SKIP_WHEELS=1 OUT=/tmp/gpu PYTHON=.venv/bin/python \
#                 bash scripts/gpu_checks.sh
#
# Each step has its own time limit and writes one file under $OUT (at most 8 files come back);
# a step that runs out of time keeps what it printed. summary.txt lists each step's exit status
# and seconds (124: stopped at its limit). What each output answers (docs/benchmarks.md):
#   pytest.txt    the CUDA tests (CPU/GPU agreement of the QP, CBF rows, grid OT, P^pi, presets)
#   qp.txt        issue 3: B = 4096, n = 2, m = 4 <= 1 ms, with qpth and cvxpylayers beside it
#   grid_ot.txt   issue 5: 1000x1000 <= 2 s per plan, and the 256x256 GPU rows
#   markov.txt    issue 5: P^pi for 10^6 cells on the GPU
#   otq_large.txt issue 5: time per OT-Q episode on city1000 (each P^pi and OT solve as it ends;
#                 P^pi truncated at 10^6 steps is 10^6 sparse products: ~1.75 h on the 2-core CPU)
#   dsrl.txt      issue 4: dsrl-dubins-quick end to end with --device cuda, and its wall time
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/otsafe-gpu}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "${SKIP_WHEELS:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi

step() { # step NAME SECONDS COMMAND...: run COMMAND with a limit, output to $OUT/NAME.txt
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1 </dev/null
    rc=$?
    echo "$name rc=$rc $(($(date +%s) - start))s (limit ${limit}s)" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
{
    date -u
    nvidia-smi 2>&1 | head -15
    "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() \
else '')"
} >>"$OUT/summary.txt" 2>&1

if [ "$QUICK" = 1 ]; then
    qp_sizes=(--batch-sizes 1 256 --m-values 4 --repeats 5 --accuracy-rows 16)
    grid_runs=("--sizes 30 --epsilons 4")
    markov_sizes=(--sizes 100 --maps obstacles --policies greedy --methods lu)
    otq_map=(--map rooms100 --episodes 1 --max-steps 20000 --epsilons 4)
else
    qp_sizes=(--batch-sizes 1 64 256 4096 65536 --m-values 1 4 16 --accuracy-rows 64)
    # 1000x1000 first (the target), at blurs of 8 and 4 cells; then 256x256 as on the CPU
    grid_runs=("--sizes 1000 --epsilons 64 16" "--sizes 256 --epsilons 16 4")
    markov_sizes=(--sizes 1000 --maps obstacles --policies greedy --methods lu)
    otq_map=(--map city1000 --episodes 2 --max-steps 1000000 --epsilons 16)
fi
qpth=(.whl/qpth-*.tar.gz)
qpth_arg=()
[ -e "${qpth[0]}" ] && qpth_arg=(--qpth-sdist "${qpth[0]}")

step pytest 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_qp.py \
    tests/test_cbf.py tests/test_grid_ot.py tests/test_markov.py tests/test_large_otq.py \
    tests/test_config.py tests/test_dsrl_cli.py
step qp 120 "$PY" benchmarks/bench_qp.py --device "$DEVICE" "${qp_sizes[@]}" --budget 2 \
    "${qpth_arg[@]}"
grid_cmd=""
for run in "${grid_runs[@]}"; do
    grid_cmd+="'$PY' benchmarks/bench_grid_ot.py --device $DEVICE $run --no-exact --pot-max 0; "
done
step grid_ot 100 bash -c "$grid_cmd"
step markov 60 "$PY" benchmarks/bench_markov.py --device "$DEVICE" "${markov_sizes[@]}" \
    --repeats 2
step otq_large 80 "$PY" benchmarks/bench_otq_large.py "${otq_map[@]}" --device "$DEVICE" \
    --mode truncated --phases
step dsrl 45 "$PY" -m otsafe.cli run dsrl-dubins-quick --out "$OUT/dsrl-run" \
    --device "$DEVICE"
rm -rf "$OUT/dsrl-run" # too many files to come back; its wall time is in summary.txt
cat "$OUT/summary.txt"
