"""The GPU benchmark: one command, under 8 minutes on one H100/H200, no network (see bench/gpu/run.sh).

    bash bench/gpu/run.sh                                   # installs bench/gpu/wheels, then runs this
    python bench/gpu/gpu_bench.py --out bench/results       # on a machine where deepspeed is installed
    python bench/gpu/gpu_bench.py --cpu-smoke --out /tmp/x  # every code path on a CPU, in under a minute
    python bench/gpu/gpu_bench.py --stages matmul,training  # a subset (a rerun of one stage)

Stages, in order, each in its own process with its own timeout (clipped to what is left of --budget-s); a
failing stage is recorded and the next one runs. Times: estimates for an H100 with cold caches (max: timeout).
  env         GPU, driver, nvcc, versions (checks.py env)                              ~5 s
  fused-adam  DeepSpeed FusedAdam JIT-built by nvcc into a private TORCH_EXTENSIONS_DIR,
              compared with torch AdamW (checks.py fused-adam); started first, in the
              background (CPU work), collected before training                         60-120 s (max 300)
  tests       pytest -m gpu tests/model/test_gpu_kernels.py (Triton compiles included) 30-60 s (max 150)
  kernels     each fused kernel (SDPA attention, Triton LayerNorm and bias-GeLU,
              chunked cross-entropy) against its torch reference, bf16, forward and
              gradients (checks.py kernels)                                            15-30 s (max 120)
  matmul      bf16 dense matmul TFLOP/s over large squares and the models' shapes,
              the best against the rated peak of training.metrics                     15-25 s (max 90)
  training    codeparrot-small (micro 16, no activation checkpointing) and codeparrot
              1.5B (micro 8, activation checkpointing), seq 1024, ZeRO-2, bf16, one
              rank, fused kernels on and off: 3 warm-up + 10 timed steps each
              (train_case.py); out of memory halves the micro batch and retries.
              Small 25-40 s per case, 1.5B 60-100 s (the CPU-side model build and
              initialisation dominate)                                   ~4 min (max 150/240 each)
  planner     codeparrot-plan's prediction per case (memory, tokens/s) when
              training/planner.py exists; the measured MFU is passed as --mfu         ~3 s per case
Total with run.sh's install: about 6-7 minutes. Cases that no longer fit in the budget are skipped (and
recorded), the most informative first: small fused, 1.5B fused, small unfused, 1.5B unfused.

Writes ``<out>/gpu_report.json`` after every stage (so a kill leaves a report) and each stage's output under
``<out>/gpu_logs/``. The report: mode, command, times, machine, install, one entry per stage (status ok,
failed, timeout or skipped, seconds, figures) and the summary lines printed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
STAGES = ("env", "fused-adam", "tests", "kernels", "matmul", "training", "planner")
DEFAULT_BUDGET_S = 450.0  # run.sh's install comes before; 8 minutes in all
RESERVE_S = 10.0  # kept back from every timeout for the report
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
LAUNCHER_PREFIXES = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "SLURM_", "MPI_LOCAL")
GIB = 2**30


@dataclasses.dataclass(frozen=True, kw_only=True)
class Case:
    """One training measurement (train_case.py's arguments) and its time allowance."""

    name: str
    preset: str
    micro: int
    seq: int
    fused: bool
    activation_checkpointing: bool
    precision: str = "bf16"
    ds: str = "ds_configs/zero2.json"
    warmup: int = 3
    steps: int = 10
    timeout_s: float = 150.0
    min_s: float = 40.0  # not started with less budget left

    def argv(self, micro: int) -> list[str]:
        return [
            f"--preset={self.preset}", f"--micro={micro}", f"--seq={self.seq}",
            f"--precision={self.precision}", f"--ds={self.ds}", f"--warmup={self.warmup}",
            f"--steps={self.steps}", "--fused" if self.fused else "--no-fused",
            "--activation-checkpointing" if self.activation_checkpointing
            else "--no-activation-checkpointing",
        ]  # fmt: skip


def gpu_cases() -> list[Case]:
    """Most informative first: a case that no longer fits in the budget is skipped."""
    small = dict(preset="codeparrot-small", micro=16, seq=1024, activation_checkpointing=False)
    large = dict(
        preset="codeparrot", micro=8, seq=1024, activation_checkpointing=True, timeout_s=240, min_s=90
    )
    return [
        Case(name="codeparrot-small fused", fused=True, **small),
        Case(name="codeparrot fused", fused=True, **large),
        Case(name="codeparrot-small unfused", fused=False, **small),
        Case(name="codeparrot unfused", fused=False, **large),
    ]


def smoke_cases() -> list[Case]:
    tiny = dict(preset="tiny", micro=2, seq=64, activation_checkpointing=False, precision="fp32",
                ds="ds_configs/zero2_cpu.json", warmup=1, steps=2, timeout_s=120, min_s=10)  # fmt: skip
    return [Case(name="tiny fused", fused=True, **tiny), Case(name="tiny unfused", fused=False, **tiny)]


class Budget:
    """Seconds left of the run's total; every stage timeout is clipped to it."""

    def __init__(self, started: float, total_s: float) -> None:
        self.started, self.total_s = started, total_s

    def elapsed(self) -> float:
        return time.time() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def timeout(self, stage_s: float) -> float:
        return max(1.0, min(stage_s, self.left() - RESERVE_S))

    def enough(self, need_s: float) -> bool:
        return self.left() - RESERVE_S >= need_s


# ---- processes ------------------------------------------------------------------------------------------


def worker_env(smoke: bool) -> dict[str, str]:
    """The environment of every stage process: the checkout importable, no launcher variables (each
    training case is its own world of one), a private extension cache shared by the stages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARS and not k.startswith(LAUNCHER_PREFIXES) and k != "MASTER_PORT"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "codeparrot_gpu_ext"))
    env["PYTHONUNBUFFERED"] = "1"
    # DeepSpeed refuses to JIT-build an op when nvcc's CUDA version differs from torch's in the minor
    # number; the build is what the fused-adam stage tests, so let it try and record what happens.
    env.setdefault("DS_SKIP_CUDA_CHECK", "1")
    if smoke:
        env["OMP_NUM_THREADS"] = "1"
    return env


def start(cmd: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session (a timeout kills its whole tree), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, log: Path, timeout: float, started: float) -> dict[str, Any]:
    """Wait for ``proc`` up to ``timeout`` s, killing its process group after; rc, time, output tail."""
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "seconds": time.time() - started,
        "log": log.name,
        "tail": tail,
    }


def run(cmd: Sequence[str], log: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    started = time.time()
    return finish(start(cmd, log, env), log, timeout, started)


def status_of(proc: dict[str, Any], result: dict[str, Any] | None = None) -> str:
    if proc["timed_out"]:
        return "timeout"
    if result is not None and "status" in result:
        return result["status"]
    return "ok" if proc["rc"] == 0 else "failed"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- the report -----------------------------------------------------------------------------------------


class Report:
    """gpu_report.json, rewritten whole (atomically) after every stage."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "stages": {s: {"status": "pending"} for s in STAGES}}

    def stage(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


@dataclasses.dataclass(kw_only=True)
class Context:
    smoke: bool
    device: str
    out: Path
    logs: Path
    env: dict[str, str]
    budget: Budget
    report: Report
    selected: tuple[str, ...]
    say: Callable[[str], None]


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def check_stage(ctx: Context, check: str, timeout_s: float, extra: Sequence[str] = ()) -> dict[str, Any]:
    """checks.py ``check`` in its own process: its JSON, plus how the process went."""
    out = ctx.logs / f"{check}.json"
    cmd = [sys.executable, str(HERE / "checks.py"), check, f"--device={ctx.device}", f"--out={out}", *extra]
    proc = run(cmd, ctx.logs / f"{check}.log", ctx.env, ctx.budget.timeout(timeout_s))
    result = read_json(out) if not proc["timed_out"] else None
    record = {**(result or {}), "status": status_of(proc, result), "seconds": proc["seconds"]}
    record["log"] = proc["log"]
    if record["status"] != "ok":
        record["tail"] = proc["tail"]
    return record


def stage_tests(ctx: Context) -> dict[str, Any]:
    """pytest -m gpu on the GPU kernel tests; per-test outcomes from its JUnit XML."""
    xml = ctx.logs / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/model/test_gpu_kernels.py", "-q",
           "-p", "no:cacheprovider", f"--junitxml={xml}"]  # fmt: skip
    proc = run(cmd, ctx.logs / "tests.log", ctx.env, ctx.budget.timeout(150))
    record: dict[str, Any] = {"status": status_of(proc), "seconds": proc["seconds"], "log": proc["log"]}
    record["command"] = shlex.join(cmd[1:])
    try:
        cases = ET.parse(xml).getroot().iter("testcase")
    except (OSError, ET.ParseError):
        record["tail"] = proc["tail"]
        return record
    tests = {}
    for case in cases:
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = next((c.get("message", "") for c in case if c.tag != "system-out"), "")
        tests[case.get("name")] = {"outcome": outcome, "message": detail[:500]} if detail else outcome
    outcomes = [t if isinstance(t, str) else t["outcome"] for t in tests.values()]
    record.update({k: outcomes.count(k) for k in ("passed", "failure", "error", "skipped")}, tests=tests)
    if record["status"] != "ok":
        record["tail"] = proc["tail"]
    return record


# ---- training -------------------------------------------------------------------------------------------


def with_retries(case: Case, attempt: Callable[[int], dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """``attempt(micro)`` from the case's micro batch, halving after each out-of-memory result, while the
    budget allows; the last result with every attempt listed."""
    micro, attempts = case.micro, []
    result: dict[str, Any] = skipped(f"under {case.min_s:.0f} s of budget left")
    while budget.enough(case.min_s):
        result = attempt(micro)
        attempts.append({"micro_batch": micro, "status": result["status"]})
        if result["status"] != "oom" or micro == 1:
            break
        micro //= 2
        result = skipped(f"out of memory at micro batch {micro * 2}; under {case.min_s:.0f} s left to retry")
    return {**result, "attempts": attempts}


def stage_training(ctx: Context, cases: list[Case], torch_adamw: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def attempt(case: Case, micro: int) -> dict[str, Any]:
        slug = case.name.replace(" ", "_") + f"_micro{micro}"
        out = ctx.logs / f"train_{slug}.json"
        cmd = [sys.executable, str(HERE / "train_case.py"), *case.argv(micro), f"--out={out}"]
        cmd += ["--torch-adamw"] if torch_adamw else []
        proc = run(cmd, ctx.logs / f"train_{slug}.log", ctx.env, ctx.budget.timeout(case.timeout_s))
        result = read_json(out) if not proc["timed_out"] else None
        record = {**(result or {}), "status": status_of(proc, result), "seconds": proc["seconds"]}
        record["log"] = proc["log"]
        if record["status"] not in ("ok", "oom"):
            record["tail"] = proc["tail"]
        return record

    for case in cases:
        result = with_retries(case, lambda micro, case=case: attempt(case, micro), ctx.budget)
        results[case.name] = {"case": dataclasses.asdict(case), **result}
        ctx.say(f"training {case.name}: {case_line(results[case.name])}")
        ctx.report.stage("training", {"status": "running", "cases": results})
    statuses = {r["status"] for r in results.values()}
    status = "ok" if statuses <= {"ok"} else "failed" if statuses - {"ok", "skipped"} else "partial"
    return {"status": status, "torch_adamw_forced": torch_adamw, "cases": results}


def case_line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status']} {r.get('reason', '')}".strip()
    mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
    return (
        f"micro {r['micro_batch']}: {r['tokens_per_s']:,.0f} tok/s{mfu}, peak memory "
        f"{r['peak_memory_bytes'] / GIB:.1f} GiB, {r['optimizer']}, kernels {r['kernels']}"
    )


# ---- the planner's predictions --------------------------------------------------------------------------


def stage_planner(ctx: Context, training: dict[str, Any], gpu_key: str | None) -> dict[str, Any]:
    """codeparrot-plan's prediction for every case, measured or not (bench/gpu/predictions.py)."""
    from bench.gpu.predictions import predict_all

    cases = training.get("cases", {})
    if not cases:
        return skipped("no training cases ran")
    key = gpu_key or "h100-sxm"  # the CPU smoke run asks about the H100
    started = time.time()
    predictions = predict_all(cases, key, ctx.env, ctx.budget.timeout(60))  # skipped cases too
    ok = [p for p in predictions.values() if p["status"] == "ok"]
    status = (
        "ok" if ok and len(ok) == len(predictions) else "failed" if ok else predictions_status(predictions)
    )
    return {
        "status": status,
        "seconds": time.time() - started,
        "gpu": key,
        "gpu_from": "device" if gpu_key else "default",
        "cases": predictions,
    }


def predictions_status(predictions: dict[str, Any]) -> str:
    statuses = {p["status"] for p in predictions.values()}
    return "planner unavailable" if statuses == {"planner unavailable"} else "failed"


# ---- summary and driver ---------------------------------------------------------------------------------


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The report in a few lines: machine, tests, kernels, FusedAdam, matmul peak, cases, planner, time."""
    m, st = data.get("machine") or {}, data["stages"]
    v = m.get("versions", {})
    lines = [
        f"machine: {m.get('gpu') or 'no GPU'} ({m.get('gpu_key')}), driver {m.get('driver')}, python "
        f"{m.get('python')}, torch {v.get('torch')} (CUDA {m.get('torch_cuda')}), triton {v.get('triton')}, "
        f"deepspeed {v.get('deepspeed')}, nvcc: {m.get('nvcc')}"
    ]
    t = st["tests"]
    counts = ", ".join(f"{t[k]} {k}" for k in ("passed", "failure", "error", "skipped") if t.get(k))
    lines.append(f"tests: {t['status']}" + (f" ({counts})" if counts else ""))
    k = st["kernels"]
    for c in k.get("checks", []):
        diffs = (
            f"max diff out {c['max_out_diff']:.2e}, grad {c['max_grad_diff']:.2e}"
            if "max_out_diff" in c
            else ""
        )
        lines.append(f"kernel {c['name']}: {c['status']} {diffs or c.get('reason', '')}".rstrip())
    if not k.get("checks"):
        lines.append(f"kernels: {k['status']}")
    a = st["fused-adam"]
    adam = ""
    if "build_or_load_s" in a:
        adam = f", built or loaded in {a['build_or_load_s']:.0f} s"
        adam += f", max diff vs torch AdamW {a['max_param_diff_vs_torch_adamw']:.1e}"
    lines.append(f"FusedAdam: {a['status']}{adam}")
    mm = st["matmul"]
    if mm.get("best_tflops"):
        rated = (
            f" = {mm['best_vs_rated']:.0%} of rated {mm['rated_tflops']:.0f}"
            if mm.get("rated_tflops")
            else ""
        )
        lines.append(
            f"matmul {mm['precision']}: best {mm['best_tflops']:.4g} TFLOP/s at {mm['best_shape']}{rated}"
        )
    else:
        lines.append(f"matmul: {mm['status']}")
    plans = st["planner"].get("cases", {})
    for name, r in st["training"].get("cases", {}).items():
        line = f"case {name}: {case_line(r)}"
        if r.get("mfu") is not None and mm.get("best_tflops"):
            line += (
                f"; {r['mfu'] * r['rated_peak_tflops'] / mm['best_tflops']:.0%} of the measured matmul peak"
            )
        lines.append(line + plan_note(plans.get(name, {})))
    lines.append(f"planner: {st['planner']['status']}")
    lines.append(f"total wall time {data.get('wall_s', 0):.0f} s (budget {data['budget_s']:.0f} s)")
    return lines


def plan_note(p: dict[str, Any]) -> str:
    """The planner's prediction for a case, in a few words."""
    if not p:
        return ""
    if not p.get("predicted_peak_bytes"):
        return f"; planner: {p['status']}"
    note = f"; planner: memory {p['predicted_peak_bytes'] / GIB:.1f} GiB"
    if "measured_over_predicted_memory" in p:
        note += f" (measured/predicted {p['measured_over_predicted_memory']:.2f})"
    if "mfu_matching_measurement" in p:
        note += (
            f", {p['predicted_tokens_per_s']:,.0f} tok/s at --mfu {p['mfu_assumed']} (measured/predicted "
            f"{p['measured_over_predicted_tokens_per_s']:.2f}; --mfu {p['mfu_matching_measurement']:.2f} "
            "matches)"
        )
    return note


def install_record(log: Path | None, rc: int | None) -> dict[str, Any] | None:
    if log is None and rc is None:
        return None
    tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
    return {"rc": rc, "log": log.name if log else None, "tail": tail}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="report and logs go here")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny preset, fp32, CPU, gloo: the code paths")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total seconds from --started")
    p.add_argument("--started", type=float, help="epoch seconds the run began (run.sh: before its install)")
    p.add_argument("--install-log", type=Path, help="run.sh's pip log, recorded in the report")
    p.add_argument("--install-rc", type=int, help="run.sh's install exit status")
    args = p.parse_args(argv)
    unknown = sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    return args


def run_stages(ctx: Context) -> None:
    """Every stage in order; each records itself in the report whatever happens to the others."""
    rep, want = ctx.report, ctx.selected

    def record(name: str, result: dict[str, Any]) -> dict[str, Any]:
        rep.stage(name, result)
        seconds = f" ({result['seconds']:.0f} s)" if "seconds" in result else ""
        ctx.say(f"[{ctx.budget.elapsed():4.0f} s] {name}: {result['status']}{seconds}")
        return result

    def chosen(name: str, need_s: float) -> bool:
        if name not in want:
            record(name, skipped("not selected (--stages)"))
            return False
        if not ctx.budget.enough(need_s):
            record(name, skipped(f"under {need_s:.0f} s of budget left"))
            return False
        return True

    if chosen("env", 5):
        rep.data["machine"] = record("env", check_stage(ctx, "env", 60))
    adam = None
    if ctx.smoke:
        record("fused-adam", skipped("GPU only: FusedAdam is a CUDA op"))
    elif chosen("fused-adam", 30):
        log, out = ctx.logs / "fused-adam.log", ctx.logs / "fused-adam.json"
        cmd = [sys.executable, str(HERE / "checks.py"), "fused-adam", f"--out={out}"]
        adam = (start(cmd, log, ctx.env), log, out, time.time())
        ctx.say(f"[{ctx.budget.elapsed():4.0f} s] fused-adam: building in the background")
    if chosen("tests", 20):
        record("tests", stage_tests(ctx))
    if chosen("kernels", 15):
        record("kernels", check_stage(ctx, "kernels", 120))
    if chosen("matmul", 15):
        record("matmul", check_stage(ctx, "matmul", 90, ["--seconds=0.02"] if ctx.smoke else []))
    if adam is not None:
        proc, log, out, began = adam
        p = finish(proc, log, ctx.budget.timeout(max(1.0, 300 - (time.time() - began))), began)
        result = read_json(out) if not p["timed_out"] else None
        rec = {**(result or {}), "status": status_of(p, result), "seconds": p["seconds"], "log": p["log"]}
        record("fused-adam", rec if rec["status"] == "ok" else {**rec, "tail": p["tail"]})
    torch_adamw = not ctx.smoke and rep.data["stages"]["fused-adam"]["status"] not in ("ok", "skipped")
    cases = smoke_cases() if ctx.smoke else gpu_cases()
    if chosen("training", min(c.min_s for c in cases)):
        record("training", stage_training(ctx, cases, torch_adamw))
    if "planner" not in want:
        record("planner", skipped("not selected (--stages)"))
    else:
        gpu_key = (rep.data.get("machine") or {}).get("gpu_key")
        record("planner", stage_planner(ctx, rep.data["stages"]["training"], gpu_key))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = args.started or time.time()
    out = args.out.resolve()
    printed: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        printed.append(line)

    header = {
        "schema": 1,
        "benchmark": "gpu_bench",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "command": shlex.join([Path(sys.executable).name, "bench/gpu/gpu_bench.py", *(argv or sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "budget_s": args.budget_s,
        "machine": None,
        "install": install_record(args.install_log, args.install_rc),
    }
    report = Report(out / "gpu_report.json", header)
    ctx = Context(
        smoke=args.cpu_smoke,
        device="cpu" if args.cpu_smoke else "cuda",
        out=out,
        logs=out / "gpu_logs",
        env=worker_env(args.cpu_smoke),
        budget=Budget(started, args.budget_s),
        report=report,
        selected=tuple(args.stages.split(",")),
        say=say,
    )
    say(f"gpu_bench ({header['mode']}): report {out / 'gpu_report.json'}, logs {ctx.logs}")
    run_stages(ctx)
    data = report.data
    data["wall_s"] = ctx.budget.elapsed()
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    problems = [
        s for s, r in data["stages"].items() if r["status"] not in ("ok", "skipped", "planner unavailable")
    ]
    data["status"] = "ok" if not problems else "problems in " + ", ".join(problems)
    for line in summary_lines(data):
        say(line)
    say(f"status: {data['status']}")
    data["summary"] = printed
    report.write()
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
