"""The GPU benchmark: one command, under 8 minutes on one H100/H200, no network (see bench/gpu/run.sh).

    OUT=/some/dir bash bench/gpu/run.sh                      # installs bench/gpu/wheels, then runs this
    python -m bench.gpu.gpu_bench --out /some/dir            # on a machine where deepspeed is installed
    python -m bench.gpu.gpu_bench --cpu-smoke --out /tmp/x   # every code path on a CPU, in under a minute
    python -m bench.gpu.gpu_bench --stages env,training,planner --cases small-compile,codeparrot-no-ac-zero1

``--out`` receives exactly two files, rewritten after every stage (so a kill leaves both): gpu_report.json
and gpu_logs.tar.gz, the archive of the log directory (``--logs``, outside ``--out``: run.sh's own log, the
install log, each stage's log and JSON). ``--out`` may not lie under bench/results/, where bench/report.py
reads CPU reports.

Stages, in order, each in its own process with its own budget (printed when it starts, clipped to what is
left of --budget-s); a failing stage is recorded and the next one runs. Times: estimates on an H200.
  env         GPU, driver, nvcc, package versions, where they came from (checks.py env)     ~5 s
  fused-adam  DeepSpeed FusedAdam built through model.optim (TORCH_CUDA_ARCH_LIST made
              parseable) into a private TORCH_EXTENSIONS_DIR, against torch AdamW; started
              in the background, collected before training                        10-30 s (max 150)
  smoke       one short codeparrot-small case end to end (accumulation, timing, MFU), its
              report written before anything longer runs                           20-40 s (max 75)
  tests       pytest -m gpu tests/model/test_gpu_kernels.py; a run where every test
              skipped (or none ran) is a failure                                   30-60 s (max 90)
  kernels     each fused kernel against its torch reference, bf16 (checks.py)      15-30 s (max 60)
  matmul      bf16 dense matmul TFLOP/s, large squares and the models' shapes      10-20 s (max 45)
  training    the cases of bench/gpu/cases.py, most informative first, each at the
              shipped tokens per optimizer step; out of memory halves the micro batch
              (doubling the accumulation) and retries; cases that no longer fit are
              skipped and recorded                                                 what is left
  planner     codeparrot-plan per case: memory and tokens/s against the measurement   ~5 s (max 40)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.gpu.cases import Case, cpu_cases, gpu_cases, select, smoke_case
from bench.gpu.procs import ROOT, Processes, read_json, status_of, worker_env

STAGES = ("env", "fused-adam", "smoke", "tests", "kernels", "matmul", "training", "planner")
# Each stage's most seconds (training: what is left, less the planner's).
STAGE_BUDGET_S = {"env": 30, "fused-adam": 150, "smoke": 75, "tests": 90, "kernels": 60, "matmul": 45,
                  "planner": 40}  # fmt: skip
DEFAULT_BUDGET_S = 450.0  # run.sh's install comes before; 8 minutes in all
RESERVE_S = 10.0  # kept back from every timeout for the report
REPORT, ARCHIVE, LOGS_NAME = "gpu_report.json", "gpu_logs.tar.gz", "gpu_logs"
GPU_TESTS = ["-m", "gpu", "tests/model/test_gpu_kernels.py"]
# On a CPU the GPU tests skip; a CPU test beside them lets the smoke run pass the all-skipped rule.
CPU_SMOKE_TESTS = ["tests/model/test_gpu_kernels.py", "tests/model/test_flops.py"]


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


# ---- the report and the log archive --------------------------------------------------------------------


def write_archive(logs: Path, out: Path) -> None:
    """``out``/gpu_logs.tar.gz: the log directory under the name gpu_logs/, replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    part = out / f".{ARCHIVE}.part"
    with tarfile.open(part, "w:gz") as tar:
        tar.add(logs, arcname=LOGS_NAME)
    part.replace(out / ARCHIVE)


class Report:
    """gpu_report.json and the log archive, rewritten whole (each replaced atomically) after every stage."""

    def __init__(self, out: Path, logs: Path, header: dict[str, Any]) -> None:
        self.out, self.logs = out, logs
        self.data: dict[str, Any] = {**header, "stages": {s: {"status": "pending"} for s in STAGES}}

    def stage(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        part = self.out / f".{REPORT}.part"
        part.write_text(json.dumps(self.data, indent=1) + "\n")
        part.replace(self.out / REPORT)
        (self.logs / REPORT).write_text(json.dumps(self.data, indent=1) + "\n")  # archived too
        try:
            write_archive(self.logs, self.out)
        except OSError as err:  # the report matters more; the previous archive stays
            print(f"gpu_bench: could not archive {self.logs}: {err}", file=sys.stderr)


@dataclasses.dataclass(kw_only=True)
class Context:
    smoke: bool
    device: str
    logs: Path
    env: dict[str, str]
    budget: Budget
    report: Report
    procs: Processes
    selected: tuple[str, ...]
    cases: list[Case]
    say: Callable[[str], None]


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def check_stage(ctx: Context, check: str, timeout_s: float, extra: Sequence[str] = ()) -> dict[str, Any]:
    """bench.gpu.checks ``check`` in its own process: its JSON, plus how the process went."""
    out = ctx.logs / f"{check}.json"
    cmd = [sys.executable, "-m", "bench.gpu.checks", check, f"--device={ctx.device}", f"--out={out}", *extra]
    proc = ctx.procs.run(cmd, ctx.logs / f"{check}.log", ctx.env, ctx.budget.timeout(timeout_s))
    return process_record(proc, read_json(out) if not proc["timed_out"] else None)


def process_record(proc: dict[str, Any], result: dict[str, Any] | None, keep: Sequence[str] = ()) -> dict:
    """A stage's record: its JSON, status, seconds and log name, the output's tail unless the status is
    ok (or one of ``keep``)."""
    record = {**(result or {}), "status": status_of(proc, result), "seconds": proc["seconds"]}
    record["log"] = proc["log"]
    if record["status"] not in ("ok", *keep):
        record["tail"] = proc["tail"]
    return record


# ---- tests ----------------------------------------------------------------------------------------------


def status_of_tests(process_status: str, counts: dict[str, int]) -> tuple[str, str | None]:
    """(status, reason): a run in which no test passed (every one skipped, or none collected) failed,
    whatever pytest's exit status: it checked nothing."""
    if process_status != "ok":
        return process_status, None
    if counts.get("passed", 0) == 0:
        ran = sum(counts.values())
        return "failed", f"every one of the {ran} tests skipped" if ran else "no test ran"
    return "ok", None


def stage_tests(ctx: Context) -> dict[str, Any]:
    """The GPU kernel tests under pytest; per-test outcomes from its JUnit XML."""
    xml = ctx.logs / "pytest.xml"
    selection = CPU_SMOKE_TESTS if ctx.smoke else GPU_TESTS
    cmd = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    proc = ctx.procs.run(cmd, ctx.logs / "tests.log", ctx.env, ctx.budget.timeout(STAGE_BUDGET_S["tests"]))
    record: dict[str, Any] = {"status": status_of(proc), "seconds": proc["seconds"], "log": proc["log"]}
    record["command"] = shlex.join(cmd[1:])
    try:
        cases = list(ET.parse(xml).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        cases = []
    tests = {}
    for case in cases:
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = next((c.get("message", "") for c in case if c.tag != "system-out"), "")
        tests[case.get("name")] = {"outcome": outcome, "message": detail[:500]} if detail else outcome
    outcomes = [t if isinstance(t, str) else t["outcome"] for t in tests.values()]
    counts = {k: outcomes.count(k) for k in ("passed", "failure", "error", "skipped")}
    record.update(counts, tests=tests)
    record["status"], reason = status_of_tests(record["status"], counts)
    if reason:
        record["reason"] = reason
    if record["status"] != "ok":
        record["tail"] = proc["tail"]
    return record


# ---- training -------------------------------------------------------------------------------------------


def with_retries(case: Case, attempt: Callable[[int], dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """``attempt(micro)`` from the case's micro batch, halving after each out-of-memory result (the tokens
    per optimizer step stay: Case.accum doubles), while the budget allows; the last result with every
    attempt listed."""
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


def run_case(ctx: Context, case: Case, torch_adamw: bool) -> dict[str, Any]:
    """One case through bench.gpu.train_case, retried at smaller micro batches after out of memory."""

    def attempt(micro: int) -> dict[str, Any]:
        slug = f"train_{case.name}_micro{micro}"
        out = ctx.logs / f"{slug}.json"
        cmd = [sys.executable, "-m", "bench.gpu.train_case", *case.argv(micro), f"--out={out}"]
        cmd += ["--torch-adamw"] if torch_adamw and not case.torch_adamw else []
        proc = ctx.procs.run(cmd, ctx.logs / f"{slug}.log", ctx.env, ctx.budget.timeout(case.timeout_s))
        return process_record(proc, read_json(out) if not proc["timed_out"] else None, keep=("oom",))

    return {"case": dataclasses.asdict(case), **with_retries(case, attempt, ctx.budget)}


def stage_training(ctx: Context, torch_adamw: bool, reserve_s: float) -> dict[str, Any]:
    """The cases in order while the budget (less ``reserve_s`` for the planner) allows."""
    from bench.gpu.summary import case_line

    results: dict[str, Any] = {}
    for case in ctx.cases:
        if not ctx.budget.enough(case.min_s + reserve_s):
            results[case.name] = {"case": dataclasses.asdict(case), **skipped(
                f"needs about {case.min_s:.0f} s; {ctx.budget.left() - RESERVE_S - reserve_s:.0f} s left"
            )}  # fmt: skip
            continue
        ctx.say(f"[{ctx.budget.elapsed():4.0f} s] training {case.name}: up to {case.timeout_s:.0f} s")
        results[case.name] = run_case(ctx, case, torch_adamw)
        ctx.say(f"training {case.name}: {case_line(results[case.name])}")
        ctx.report.stage("training", {"status": "running", "cases": results})
    ran = [r["status"] for r in results.values() if r["status"] != "skipped"]
    status = "ok" if ran and set(ran) == {"ok"} else "failed" if ran else "skipped"
    skipped_names = [n for n, r in results.items() if r["status"] == "skipped"]
    return {
        "status": status,
        "torch_adamw_forced": torch_adamw,
        "skipped_cases": skipped_names,
        "cases": results,
    }


def stage_planner(ctx: Context) -> dict[str, Any]:
    """codeparrot-plan's prediction for every case, measured or not, the smoke case last
    (bench/gpu/predictions.py)."""
    from bench.gpu.predictions import predict_all

    stages = ctx.report.data["stages"]
    records = dict(stages["training"].get("cases", {}))
    if stages["smoke"].get("case"):
        records["smoke"] = stages["smoke"]
    if not records:
        return skipped("no training cases")
    gpu_key = (ctx.report.data.get("machine") or {}).get("gpu_key")
    key = gpu_key or "h100-sxm"  # the CPU smoke run asks about the H100
    started = time.time()
    predictions = predict_all(records, key, ctx.env, ctx.budget.timeout(STAGE_BUDGET_S["planner"]))
    statuses = {p["status"] for p in predictions.values()}
    status = (
        "ok"
        if statuses == {"ok"}
        else "planner unavailable"
        if statuses == {"planner unavailable"}
        else "failed"
    )
    seconds = time.time() - started
    return {"status": status, "seconds": seconds, "gpu": key, "gpu_from": "device" if gpu_key else "default",
            "cases": predictions}  # fmt: skip


# ---- driver ---------------------------------------------------------------------------------------------


def run_stages(ctx: Context) -> None:
    """Every stage in order; each records itself in the report whatever happens to the others."""
    rep, want = ctx.report, ctx.selected

    def record(name: str, result: dict[str, Any]) -> dict[str, Any]:
        rep.stage(name, result)
        seconds = f" ({result['seconds']:.0f} s)" if "seconds" in result else ""
        reason = f": {result['reason']}" if result.get("reason") else ""
        ctx.say(f"[{ctx.budget.elapsed():4.0f} s] {name}: {result['status']}{seconds}{reason}")
        return result

    def chosen(name: str, need_s: float, budget_s: float | None = None) -> bool:
        if name not in want:
            record(name, skipped("not selected (--stages)"))
            return False
        if not ctx.budget.enough(need_s):
            record(name, skipped(f"under {need_s:.0f} s of budget left"))
            return False
        budget_s = STAGE_BUDGET_S[name] if budget_s is None else budget_s
        ctx.say(
            f"[{ctx.budget.elapsed():4.0f} s] {name}: budget {ctx.budget.timeout(budget_s):.0f} s "
            f"(run: {ctx.budget.left():.0f} s left)"
        )
        return True

    if chosen("env", 5):
        rep.data["machine"] = record("env", check_stage(ctx, "env", STAGE_BUDGET_S["env"]))
    adam = None
    if ctx.smoke:
        record("fused-adam", skipped("GPU only: FusedAdam is a CUDA op"))
    elif chosen("fused-adam", 30):
        log, out = ctx.logs / "fused-adam.log", ctx.logs / "fused-adam.json"
        cmd = [sys.executable, "-m", "bench.gpu.checks", "fused-adam", f"--out={out}"]
        adam = (ctx.procs.start(cmd, log, ctx.env), log, out, time.time())
        ctx.say(f"[{ctx.budget.elapsed():4.0f} s] fused-adam: building in the background")
    if chosen("smoke", 15):
        case = smoke_case(ctx.smoke)
        result = run_case(ctx, case, torch_adamw=False)
        record("smoke", {**result, "seconds": result.get("seconds", 0.0)})
    if chosen("tests", 20):
        record("tests", stage_tests(ctx))
    if chosen("kernels", 15):
        record("kernels", check_stage(ctx, "kernels", STAGE_BUDGET_S["kernels"]))
    if chosen("matmul", 15):
        extra = ["--seconds=0.02"] if ctx.smoke else ["--seconds=0.1"]
        record("matmul", check_stage(ctx, "matmul", STAGE_BUDGET_S["matmul"], extra))
    if adam is not None:
        proc, log, out, began = adam
        waited = STAGE_BUDGET_S["fused-adam"] - (time.time() - began)
        p = ctx.procs.finish(proc, log, ctx.budget.timeout(max(1.0, waited)), began)
        record("fused-adam", process_record(p, read_json(out) if not p["timed_out"] else None))
    adam_status = rep.data["stages"]["fused-adam"]["status"]
    torch_adamw = not ctx.smoke and adam_status not in ("ok", "skipped")
    planner_s = STAGE_BUDGET_S["planner"] if "planner" in want else 0.0
    if chosen("training", min(c.min_s for c in ctx.cases) + planner_s, ctx.budget.left() - planner_s):
        record("training", stage_training(ctx, torch_adamw, planner_s))
    if chosen("planner", 5):
        record("planner", stage_planner(ctx))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "codeparrot_gpu_out",
                   help=f"{REPORT} and {ARCHIVE} go here, nothing else (default: %(default)s)")  # fmt: skip
    p.add_argument("--logs", type=Path, help=f"log directory, outside --out (default: a new temporary "
                   f".../{LOGS_NAME}; run.sh passes its own)")  # fmt: skip
    p.add_argument("--cpu-smoke", action="store_true", help="tiny preset, fp32, CPU, gloo: the code paths")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--cases", help="comma-separated training cases, in this order (default: all, in theirs)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total seconds from --started")
    p.add_argument("--started", type=float, help="epoch seconds the run began (run.sh: before its install)")
    p.add_argument("--install-log", type=Path, help="run.sh's install log, recorded in the report")
    p.add_argument("--install-rc", type=int, help="run.sh's install exit status")
    p.add_argument("--archive-only", action="store_true", help=f"only rewrite {ARCHIVE} from --logs (run.sh)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    try:
        args.case_list = select(cpu_cases() if args.cpu_smoke else gpu_cases(), args.cases)
    except ValueError as err:
        p.error(str(err))
    args.out = args.out.resolve()
    results = (ROOT / "bench" / "results").resolve()
    if args.out == results or results in args.out.parents:
        p.error(f"--out {args.out} is under {results}, where bench/report.py reads the CPU reports and a GPU "
                "report breaks it; choose another directory (e.g. /tmp/gpu_out)")  # fmt: skip
    if args.logs is not None:
        args.logs = args.logs.resolve()
        if args.logs == args.out or args.out in args.logs.parents:
            p.error(f"--logs {args.logs} is inside --out {args.out}, which holds only {REPORT} and {ARCHIVE}")
    elif args.archive_only:
        p.error("--archive-only needs --logs")
    return args


def install_record(log: Path | None, rc: int | None) -> dict[str, Any] | None:
    if log is None and rc is None:
        return None
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    return {"rc": rc, "log": log.name if log else None, "tail": tail}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.archive_only:
        write_archive(args.logs, args.out)
        return 0
    from bench.gpu.summary import summary_lines

    started = args.started or time.time()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="codeparrot_gpu_bench_")) / LOGS_NAME
    logs.mkdir(parents=True, exist_ok=True)
    printed: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        printed.append(line)

    header = {
        "schema": 2,
        "benchmark": "gpu_bench",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "command": shlex.join(
            [Path(sys.executable).name, "-m", "bench.gpu.gpu_bench", *(argv or sys.argv[1:])]
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "budget_s": args.budget_s,
        "machine": None,
        "install": install_record(args.install_log, args.install_rc),
        "archive": {"file": ARCHIVE, "logs": LOGS_NAME},
    }
    ctx = Context(
        smoke=args.cpu_smoke,
        device="cpu" if args.cpu_smoke else "cuda",
        logs=logs,
        env=worker_env(args.cpu_smoke),
        budget=Budget(started, args.budget_s),
        report=Report(args.out, logs, header),
        procs=Processes(),
        selected=tuple(args.stages.split(",")),
        cases=args.case_list,
        say=say,
    )

    def stop(signum: int, _frame: Any) -> None:  # run.sh's timeout: end the stage, keep the report
        ctx.procs.kill_all()
        ctx.report.data["status"] = f"stopped by signal {signum}"
        ctx.report.data["summary"] = printed
        ctx.report.write()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    say(f"gpu_bench ({header['mode']}): {args.out / REPORT} and {args.out / ARCHIVE} (logs {logs})")
    ctx.report.write()
    run_stages(ctx)
    data = ctx.report.data
    data["wall_s"] = ctx.budget.elapsed()
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    quiet = ("ok", "skipped", "planner unavailable")
    problems = [s for s, r in data["stages"].items() if r["status"] not in quiet]
    data["status"] = "ok" if not problems else "problems in " + ", ".join(problems)
    for line in summary_lines(data):
        say(line)
    say(f"status: {data['status']}")
    data["summary"] = printed
    ctx.report.write()
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
