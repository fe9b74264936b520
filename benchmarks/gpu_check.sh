#!/usr/bin/env bash
# One prepared check for a session that has a GPU (H100 / H200), in one call of at most 8 minutes
# (DEADLINE seconds, 480 by default; each step's timeout is cut to what is left):
#   1. the common-neighbour tests with CUDA present (Triton kernels against the references and the
#      CPU twin, plus the interpreter and CPU tests; the compile check is left out: it needs no GPU
#      and runs in `make test`),
#   2. the benchmark on the GPU (Triton kernels and the adjoverlap-style baseline, both on CUDA),
#      printing pairs/s, achieved GB/s and, for a GPU that benchmarks/gpu_specs.py knows (H100 SXM
#      3.35 TB/s, H100 PCIe 2.0, H200 4.8, A100 80GB 2.0), that traffic as a fraction of its HBM
#      bandwidth,
#   3. end-to-end scoring: benchmarks/bench_gpu.py runs `ncnc score --device cuda` for NCN (10M
#      pairs) and NCNC (1M pairs) on a generated 1M-node graph, at every precision (fp32, bf16,
#      int8: the reduced bundles exported on the host, half the pairs each), with the device/host
#      split of the time and the agreement with the CPU scorer (E2E_BUDGET seconds are kept free
#      for it; E2E_ARGS="--precisions fp32" measures fp32 alone),
# and writes benchmarks/results/common_neighbors_<gpu>.json and gpu_check_<gpu>.log (copied to
# $OUT too when that is set, as on the lent device machine).
#
#   bash benchmarks/gpu_check.sh                 # from the repository root
#   BENCH_ARGS="--pairs 200000" bash benchmarks/gpu_check.sh
#
# Python: an existing python3 whose torch sees CUDA is used as it is (missing small dependencies
# are pip-installed when an index is reachable); otherwise a venv .venv-gpu is created with the
# default (CUDA) torch wheel and this package with its [gpu,dev] extras (needs a package index).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$SECONDS
DEADLINE=${DEADLINE:-480}
E2E_BUDGET=${E2E_BUDGET:-250}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
AUTOTUNE_TEST_TIMEOUT=${AUTOTUNE_TEST_TIMEOUT:-45}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
BENCH_ARGS=${BENCH_ARGS:-}
E2E_ARGS=${E2E_ARGS:-}
# The repository's own ncnc/ (its stage folders linked in) is importable without an install.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Wheels carried in .whl/ (the lent machine reaches no package index; its image lacks polars):
# benchmarks/gpu_wheels.sh downloads them here, and the device call names .whl in `carry`.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ncnc-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/ncnc-site"
fi

# step_timeout MAX [RESERVE]: MAX seconds, or what is left before the deadline less RESERVE (the
# end-to-end step's budget by default), at least 10.
step_timeout() {
    local reserve=${2:-$E2E_BUDGET}
    local left=$(( DEADLINE - (SECONDS - START) - reserve ))
    (( left < 10 )) && left=10
    (( left < $1 )) && echo "$left" || echo "$1"
}

cuda_python() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

if [[ -x .venv/bin/python ]] && cuda_python .venv/bin/python; then
    PY=.venv/bin/python
elif command -v python3 >/dev/null && cuda_python python3; then
    PY=python3
else
    echo "== no python with CUDA torch: creating .venv-gpu"
    python3 -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet torch
    "$PY" -m pip install --quiet -e ".[gpu,dev]"
    cuda_python "$PY" || { echo "torch in .venv-gpu does not see a GPU" >&2; exit 1; }
fi

missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("triton", "numba", "pytest", "numpy") if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
    echo "== installing missing modules: $missing"
    "$PY" -m pip install --quiet $missing || echo "warning: could not install $missing; tests needing them fail" >&2
fi

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')
mkdir -p benchmarks/results
LOG="benchmarks/results/gpu_check_${SLUG}.log"
RESULT="benchmarks/results/common_neighbors_${SLUG}.json"
{
    echo "device: $GPU"
    echo "python: $PY ($("$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'))"
    date -u +"started: %Y-%m-%dT%H:%M:%SZ"
} | tee "$LOG"

status=0
echo "== tests (CUDA present): tests/triton_kernels" | tee -a "$LOG"
# --noconftest: these tests need none of the repository-wide fixtures (or their dependencies).
# One fixed Triton configuration for the many small cases (autotuning compiles and times every
# configuration for each new shape), then the larger CUDA cases again with autotuning.
timeout "$(step_timeout "$TEST_TIMEOUT")" env -u TRITON_INTERPRET NCNC_TRITON_AUTOTUNE=0 "$PY" -m pytest \
    tests/triton_kernels -q -rs --noconftest -p no:cacheprovider \
    --ignore=tests/triton_kernels/test_compile_check.py 2>&1 | tee -a "$LOG" || status=1
timeout "$(step_timeout "$AUTOTUNE_TEST_TIMEOUT")" env -u TRITON_INTERPRET NCNC_TRITON_AUTOTUNE=1 "$PY" -m pytest \
    tests/triton_kernels/test_common_neighbors.py -q -rs --noconftest -p no:cacheprovider \
    -k cuda_larger_batch 2>&1 | tee -a "$LOG" || status=1

echo "== kernel benchmark on $GPU (pairs/s, GB/s, fraction of HBM bandwidth)" | tee -a "$LOG"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
timeout "$(step_timeout "$BENCH_TIMEOUT")" env -u TRITON_INTERPRET "$PY" benchmarks/bench_common_neighbors.py \
    --device cuda --repeats 3 --out "$RESULT" $BENCH_ARGS 2>&1 | tee -a "$LOG" || status=1

echo "== end to end: ncnc score --device cuda, NCN and NCNC on a 1M-node graph" | tee -a "$LOG"
E2E_RESULT="benchmarks/results/score_${SLUG}.json"
# shellcheck disable=SC2086  # E2E_ARGS is a list of flags
timeout "$(step_timeout 600 0)" env -u TRITON_INTERPRET "$PY" benchmarks/bench_gpu.py \
    --results "$E2E_RESULT" $E2E_ARGS 2>&1 | tee -a "$LOG" || status=1

date -u +"finished: %Y-%m-%dT%H:%M:%SZ (status $status)" | tee -a "$LOG"
if [[ -n "${OUT:-}" ]]; then
    cp "$LOG" "$OUT"/
    for file in "$RESULT" "$E2E_RESULT"; do [[ ! -f "$file" ]] || cp "$file" "$OUT"/; done
fi
exit "$status"
