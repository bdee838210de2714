#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with one H100/H200 and no network, in under 8 minutes:
#
#   OUT=/some/dir bash bench/gpu/run.sh          # $OUT/gpu_report.json and $OUT/gpu_logs.tar.gz, nothing else
#   bash bench/gpu/run.sh --stages env,smoke,training,planner --cases small-compile,codeparrot-no-ac-zero1
#   bash bench/gpu/run.sh --cpu-smoke            # every code path on a CPU (tests/bench_gpu runs this)
#
# Arguments go to bench/gpu/gpu_bench.py, run from the checkout as `python -m bench.gpu.gpu_bench` (stages,
# cases, budgets: its docstring). OUT defaults to
# ${TMPDIR:-/tmp}/codeparrot_gpu_out, never bench/results/ (bench/report.py reads that). Both files in OUT
# are rewritten after every stage, so what ran comes back even if a later stage fails or the run is killed.
# The logs (this script's output, the install, each stage) live in LOGS, outside OUT, and reach OUT only
# inside the archive.
#
# 1. records the interpreter (PYTHON, default python3) and its package versions before anything changes;
# 2. installs bench/gpu/wheels (built by bench/gpu/build_wheels.sh) offline, each wheel whose distribution
#    the interpreter lacks: pip install --no-index --no-deps --target $SITE, then PYTHONPATH=$SITE, so the
#    machine's own torch, triton and transformers stay as they are. Should deepspeed still not import (a
#    machine package too old for it), every wheel goes into $SITE. Budget 60 s. SKIP_INSTALL=1 skips this;
# 3. runs `python -m bench.gpu.gpu_bench` with a budget of BUDGET_S (450) seconds from this script's start,
#    killed 20 s after.
set -uo pipefail
STARTED="$(date +%s.%N)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TMP="${TMPDIR:-/tmp}"
OUT="${OUT:-$TMP/codeparrot_gpu_out}"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$ROOT/bench/gpu/wheels}"
SITE="${SITE:-$TMP/codeparrot_gpu_site}"
LOGS="${LOGS:-$(mktemp -d "$TMP/codeparrot_gpu_bench.XXXXXX")/gpu_logs}"
BUDGET_S="${BUDGET_S:-450}"
INSTALL_S=60
mkdir -p "$LOGS"
exec 3>&1 4>&2
exec > >(tee -a "$LOGS/run.log") 2>&1
TEE_PID=$!

echo "run.sh: OUT=$OUT LOGS=$LOGS PYTHON=$PYTHON budget ${BUDGET_S} s (8 minutes with the margin)"
"$PYTHON" - <<'PY'
import importlib.metadata as m, platform, sys
print(f"run.sh: versions before install: python {platform.python_version()} ({sys.executable})")
for name in ("torch", "triton", "deepspeed", "transformers", "tokenizers", "numpy", "pytest", "ninja", "pip"):
    try:
        version = m.version(name)
    except m.PackageNotFoundError:
        version = "missing"
    print(f"run.sh:   {name} {version}")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/run.sh:   /'

missing_wheels() { # the wheels in $WHEELS whose distribution the interpreter lacks, one path a line
    "$PYTHON" - "$WHEELS" <<'PY'
import importlib.metadata as m, sys
from pathlib import Path
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        m.version(whl.name.split("-")[0])
    except m.PackageNotFoundError:
        print(whl)
PY
}

install_wheels() {
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    local pip=(timeout "$INSTALL_S" "$PYTHON" -m pip install --no-index --no-deps --target "$SITE")
    local wheels
    mapfile -t wheels < <(missing_wheels)
    echo "wheels to install into $SITE: ${wheels[*]:-none}"
    rm -rf "$SITE" && mkdir -p "$SITE"
    if ((${#wheels[@]})); then
        "${pip[@]}" "${wheels[@]}" || return 1
    fi
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "import deepspeed" && return 0
    echo "deepspeed does not import with the machine's packages; installing every wheel into $SITE"
    "${pip[@]}" --upgrade "$WHEELS"/*.whl || return 1
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "import deepspeed"
}

INSTALL_ARGS=()
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    echo "run.sh: install skipped (SKIP_INSTALL=1)"
elif ! compgen -G "$WHEELS/*.whl" > /dev/null; then
    echo "run.sh: no wheels in $WHEELS (bench/gpu/build_wheels.sh builds them); nothing installed"
else
    echo "run.sh: install: budget ${INSTALL_S} s; pip --target $SITE, log $LOGS/install.log"
    install_wheels > "$LOGS/install.log" 2>&1
    INSTALL_ARGS=(--install-log "$LOGS/install.log" --install-rc $?)
    tail -n 5 "$LOGS/install.log" | sed 's/^/run.sh:   /'
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # ninja (torch's JIT extension builds) is a script of the ninja wheel.
    export PATH="$SITE/bin:$PATH"
fi

timeout $((${BUDGET_S%.*} + 20)) "$PYTHON" -m bench.gpu.gpu_bench --out "$OUT" --logs "$LOGS" \
    --started "$STARTED" --budget-s "$BUDGET_S" "${INSTALL_ARGS[@]}" "$@"
rc=$?
echo "run.sh: gpu_bench.py exited $rc after $(($(date +%s) - ${STARTED%.*})) s; report $OUT/gpu_report.json"
# Close the tee so that run.log is complete, then archive the logs once more.
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE_PID" 2> /dev/null
"$PYTHON" -m bench.gpu.gpu_bench --archive-only --out "$OUT" --logs "$LOGS" || rc=1
exit $rc
