#!/usr/bin/env bash
# Runs nerve under Debian's qemu-user on CPU models without AVX-512 and
# without AVX, so the loader's choice is checked on CPUs this machine is not:
#   qemu-x86_64 -cpu Haswell  (AVX2 + FMA, no AVX-512) must pick avx2
#   qemu-x86_64 -cpu Nehalem  (SSE4.2, no AVX)         must pick generic
# and each trains a small model (scripts/smoke_train.py). Also checks that
# NERVE_CPU=avx512 under Haswell raises an ImportError naming avx512f.
# qemu emulates every instruction in software: expect a minute or two each.
# Usage: scripts/qemu_levels.sh [python]   (python: one with nerve installed)
# Needs: apt-get install -y qemu-user
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
QEMU=$(command -v qemu-x86_64 || true)
if [ -z "$QEMU" ]; then
  echo "qemu-x86_64 not found: apt-get install -y qemu-user" >&2
  exit 2
fi
# A venv's python is a symlink qemu follows; Python still finds the venv's
# pyvenv.cfg next to the path it was started by.
pyexe=$(command -v "$PY")
smoke=$PWD/scripts/smoke_train.py
cd /tmp
fail=0
run() {  # cpu expected-level
  echo "== qemu -cpu $1 (expect $2)"
  if EXPECT_LEVEL=$2 SMOKE_SAMPLES=1000 SMOKE_EPOCHS=10 OMP_NUM_THREADS=1 \
      "$QEMU" -cpu "$1" "$pyexe" "$smoke" 2> >(grep -v "TCG doesn.t support" >&2); then
    echo "ok: $1 -> $2"
  else
    echo "FAIL: $1" >&2
    fail=1
  fi
}
run Haswell avx2
run Nehalem generic
echo "== qemu -cpu Haswell, NERVE_CPU=avx512 (expect ImportError naming avx512f)"
out=$(NERVE_CPU=avx512 "$QEMU" -cpu Haswell "$pyexe" -c "import nerve" 2>&1 || true)
if echo "$out" | grep -q "ImportError.*lacks avx512f"; then
  echo "ok: $(echo "$out" | tail -1)"
else
  echo "FAIL: $out" >&2
  fail=1
fi
exit $fail
