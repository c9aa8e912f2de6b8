#!/usr/bin/env bash
# The GPU check, one command (`make gpu-check`, or this script with PYTHON set): the CUDA tests
# (tests/test_cuda.py, and tests/test_triton.py, which runs the compiled Triton kernels on the
# device), then the cost benchmark on the device: TP and through-time, with the layer's CUDA path
# (auto) and with backend="triton", against torch.nn's cuDNN BPTT, peak memory included, at
# (T, B, p) = (784, 16, 100), (784, 512, 100), (60, 20, 100) and a 2-layer bidirectional stack,
# both cells. Writes $OUT/tests.txt and $OUT/bench.md (OUT defaults to runs/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})")
print(f"gpu-check: {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")
PYEOF
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_triton.py 2>&1 | tee "$OUT/tests.txt" || status=$?
"$PY" -m targetprop.bench --grid gpu --device cuda --threads 1 --repeats "${REPEATS:-10}" --warmup 2 \
    --regime orthogonal --loops auto triton \
    --methods native-bptt engine-bp tp-linearized tp-through-time gru-native-bptt gru-tp-linearized gru-tp-through-time \
    --output "$OUT/bench.md" || status=$?
echo "gpu-check: tests in $OUT/tests.txt, benchmark in $OUT/bench.md (exit $status)"
exit "$status"
