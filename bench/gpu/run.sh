#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with one H100/H200 and no network:
#
#   bash bench/gpu/run.sh                      # report: $OUT/gpu_report.json (OUT defaults to bench/results)
#   bash bench/gpu/run.sh --stages training    # arguments go to bench/gpu/gpu_bench.py
#
# 1. installs bench/gpu/wheels (built by bench/gpu/build_wheels.sh) offline into the machine's Python
#    (PYTHON, default python3), which keeps its own torch, triton and transformers: pip resolves deepspeed's
#    and pytest's dependencies against what is installed and takes only the missing ones from the wheels
#    (about 10-20 s). If that resolution fails, every wheel whose distribution is missing is installed with
#    --no-deps. SKIP_INSTALL=1 skips this step (a machine that has them).
# 2. runs bench/gpu/gpu_bench.py with a budget of 8 minutes from this script's start, minus a margin
#    (stages and time estimates: its docstring). Output goes to the terminal and to $OUT/gpu_bench.log.
set -uo pipefail
STARTED="$(date +%s.%N)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results}"
PYTHON="${PYTHON:-python3}"
WHEELS="$ROOT/bench/gpu/wheels"
BUDGET_S="${BUDGET_S:-450}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_bench.log") 2>&1

install_wheels() {
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    local pip=("$PYTHON" -m pip install --no-index --find-links "$WHEELS")
    timeout 120 "${pip[@]}" deepspeed pytest pytest-timeout ninja && return 0
    echo "run.sh: resolving against the installed packages failed; installing each missing wheel --no-deps"
    local missing
    missing=$("$PYTHON" - "$WHEELS" <<'PY'
import importlib.metadata as m, sys
from pathlib import Path
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = whl.name.split("-")[0]
    try:
        m.version(name)
    except m.PackageNotFoundError:
        print(whl)
PY
)
    [ -z "$missing" ] && return 1
    # shellcheck disable=SC2086  # one path per word
    timeout 120 "${pip[@]}" --no-deps $missing
}

INSTALL_ARGS=()
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    echo "run.sh: installing $WHEELS into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    install_wheels > "$OUT/gpu_install.log" 2>&1
    INSTALL_ARGS=(--install-log "$OUT/gpu_install.log" --install-rc $?)
    tail -n 5 "$OUT/gpu_install.log"
    "$PYTHON" -c "import deepspeed" > /dev/null 2>&1 || echo "run.sh: WARNING: deepspeed does not import"
fi
# ninja (torch's JIT extension builds) lands in the interpreter's scripts directory, maybe not on PATH.
SCRIPTS="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$SCRIPTS:$HOME/.local/bin:$PATH"

timeout $((${BUDGET_S%.*} + 20)) "$PYTHON" bench/gpu/gpu_bench.py --out "$OUT" --started "$STARTED" \
    --budget-s "$BUDGET_S" "${INSTALL_ARGS[@]}" "$@"
rc=$?
echo "run.sh: gpu_bench.py exited $rc after $(($(date +%s) - ${STARTED%.*})) s; report $OUT/gpu_report.json"
exit $rc
