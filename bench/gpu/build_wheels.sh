#!/usr/bin/env bash
# Build bench/gpu/wheels/: what the GPU benchmark machine lacks (no network there; Python 3.12 with torch,
# triton, transformers, tokenizers, numpy; no deepspeed). Run here, with network; the checkout and this
# directory (a few MiB) are then copied to the GPU machine, where bench/gpu/run.sh installs them offline.
#
#   bash bench/gpu/build_wheels.sh              # versions: those installed in .venv (PY=... to change)
#
# - deepspeed: a source distribution on PyPI, built here without its ops (DS_BUILD_OPS=0): a pure-Python
#   wheel (py3-none-any); its CUDA ops (FusedAdam) are JIT-compiled with nvcc on the GPU machine.
# - deepspeed's pure-Python dependencies and pytest (py3-none-any wheels from PyPI).
# - deepspeed's compiled dependencies (pydantic-core, msgpack, psutil) and ninja (torch's JIT builds need
#   it), which have no pure wheel: downloaded as CPython 3.12 manylinux x86_64 wheels (abi3 or py3-none
#   where offered). One the index does not offer for 3.12 is listed at the end and skipped: run.sh then
#   relies on the GPU machine having it (pydantic-core: without it deepspeed does not import).
# - not datasets: training reads preprocessed shards; only data_tools' saved-HF-dataset source imports it.
# - not the project: run.sh runs it from the checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WHEELS="$ROOT/bench/gpu/wheels"
PURE=(hjson py-cpuinfo einops pydantic annotated-types typing-inspection typing-extensions packaging tqdm
      pytest pluggy iniconfig pygments pytest-timeout)
BINARY=(pydantic-core msgpack psutil ninja)

pin() { # name==version installed for $PY
    "$PY" -c 'import importlib.metadata as m, sys; print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")' "$1"
}

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$(pin deepspeed)"
for name in "${PURE[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "$(pin "$name")"
done
missing=()
for name in "${BINARY[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" --implementation cp \
        --python-version 3.12 --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 "$(pin "$name")" 2>/dev/null || missing+=("$(pin "$name")")
done

"$PY" - "$WHEELS" <<'PY'
import sys
from pathlib import Path

total = 0
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    py, abi, plat = whl.stem.split("-")[-3:]
    if plat == "any":
        kind = "pure"
    elif abi == "none":
        kind = "binary, any Python 3 (Linux x86_64)"
    elif abi == "abi3":
        kind = f"binary, CPython >= 3.{py.removeprefix('cp3')} stable ABI (Linux x86_64)"
    else:
        kind = "binary, CPython 3.12 only (Linux x86_64)"
    size = whl.stat().st_size
    total += size
    print(f"{whl.name}\n    {size / 2**20:.2f} MiB, {kind}")
print(f"total {total / 2**20:.2f} MiB in {sys.argv[1]}")
PY
if ((${#missing[@]})); then
    echo "not offered for CPython 3.12 x86_64 by the index, not in $WHEELS: ${missing[*]}"
fi
