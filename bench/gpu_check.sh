#!/usr/bin/env bash
# The one device call of issue 18 (see bench/gpu_check.py): run from the repository root on the
# device machine, with the figures going to $OUT. The machine reaches no registry: the packages
# the CPU venv lacks travel as ignored paths (64 MiB per call) and are installed here:
#   .gpu-wheels/*.whl          onnxruntime-gpu and the nvidia-* CUDA/cuDNN wheels; wheels over
#   .gpu-wheels/*.whl.part-*   50 MiB are split (`split -b 50M`) and joined again here
# Python and the project's other dependencies come from the carried .venv (or the machine's).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
if [ -d .gpu-wheels ]; then
  for first in .gpu-wheels/*.whl.part-aa; do
    [ -e "$first" ] || continue
    cat "${first%.part-aa}".part-* > "${first%.part-aa}"
  done
  "$PY" -m pip install -q --no-deps --target /tmp/gpu-site .gpu-wheels/*.whl
  export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
