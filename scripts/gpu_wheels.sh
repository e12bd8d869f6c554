#!/usr/bin/env bash
# Fetch what scripts/gpu_checks.sh needs on the device machine and cannot download there.
#
# The device machine (docs/benchmarks.md, "GPU checks") has Python 3.12 with torch, NumPy, SciPy,
# matplotlib, PyYAML, tqdm, pytest and hypothesis, no network, and none of otsafe's other
# dependencies. Run this here, where pip reaches the registry: it downloads x86-64 CPython 3.12
# wheels of the missing packages, and qpth's sdist for the QP benchmark, into .whl/ (ignored by
# git). About 40 MB: POT is pinned to 0.9.6.post1 (1.5 MB; 0.9.7's wheel is 33 MB) and SCS to
# 3.2.7 (10 MB; 3.3's is 43 MB), so the working tree and the wheels stay under the 64 MiB a
# device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" .whl
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    POT==0.9.6.post1 gymnasium==1.4.0 farama-notifications==0.0.6 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 \
    cvxpy==1.9.3 scs==3.2.7.post2 clarabel==0.11.1 osqp==1.1.3 qdldl==0.1.9.post1 \
    highspy==1.16.0 sparsediffpy==0.6.1 cffi==2.1.1 pycparser==3.12 \
    diffcp==1.1.9 cvxpylayers==1.2.0
"$PY" -m pip download -q --no-deps --no-binary=:all: -d .whl qpth==0.0.18
du -sh .whl
