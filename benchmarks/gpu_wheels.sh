#!/usr/bin/env bash
# Download into .whl/ the wheels benchmarks/gpu_check.sh needs on the lent GPU machine, whose image
# (Python 3.12, torch, triton, numba, onnxruntime, pyarrow, click, safetensors, tqdm, PyG, onnx,
# onnxscript) lacks polars and reaches no package index: the polars this venv runs. Run here, then
# call the device with carry [".whl"] and `bash benchmarks/gpu_check.sh` (it installs them into
# /tmp/ncnc-site).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
versions=$("$PY" -c 'import importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in ("polars", "polars-runtime-32")))')
# shellcheck disable=SC2086  # versions is a list of requirements
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $versions
ls -la .whl
