"""Start-up time of pretrain_gpt.py: from spawning the `deepspeed` launcher to the end of the first training
step, against a no-op DeepSpeed launch of as many ranks.

    python -m bench.startup           # 2 ranks, 4 layers x 256, seq 256, micro-batch 4, 5 launches per side
    python -m bench.startup --repeats 3 --warmup 0

Both sides are `deepspeed --num_gpus R --master_addr 127.0.0.1 --master_port P <script>` with the same
environment (bench.launcher: OMP_NUM_THREADS=1, private extension caches, this checkout on PYTHONPATH;
and PYTHONUNBUFFERED=1):
  no-op  this module with --noop (`--module bench.startup`): imports torch and deepspeed, joins the
         process group with deepspeed.init_distributed (gloo, DeepSpeed's CPU shared-memory all-reduce op
         not built, as launch.env does), one barrier, prints `no-op: past the barrier` from rank 0
         (flushed), exits. Its figure: launch to the moment this process reads that line from the
         launcher's output.
  ours   pretrain_gpt.py on shards prepared once beforehand (bench.common.build_shards: the standard
         library, an 8,192-id tokenizer, as bench/train_throughput.py trains on), --ds_config
         ds_configs/zero2_cpu.json, a fresh save_dir per launch, train.precision as given (default
         "auto", what a run gets unless it sets it). Its figure: launch to the end of step 1, the moment
         this process reads rank 0's `step 1/N` log line from the launcher's output (training.loop logs
         and flushes it right after the step's optimizer update; the ranks write to the launcher's pipe
         unbuffered, python -u). The launch to its exit (saving the checkpoint included) is recorded
         beside it.
Both sides are timed to the same kind of event: the moment this process reads rank 0's marker line
through the launcher's pipe, after the work the side exists to do (the no-op's barrier, ours' first step).
Neither figure holds an interpreter's teardown or the launcher's once-a-second poll of its ranks; timing
the no-op to its exit while ours stopped at step 1 (as this benchmark once did) credited ours with the
no-op's teardown. Both clocks are this process's time.perf_counter(), started just before the launcher
is spawned. The sides alternate over --repeats launches each (no-op, ours, ours, no-op, ...) after
--warmup untimed launches of each (file cache, the shards' verification record), so slow drifts in
machine load hit both alike. Each side's figure is the median over its launches, the spread the min-max,
and

    ratio ours/no-op = median launch-to-step-1-line of ours / median launch-to-barrier-line of the no-op

Launch to exit is recorded for both sides as well, and its ratio beside (ours' exit includes saving its
checkpoint, so that ratio is not the target's).

The CPU seconds of each whole launch (launcher and ranks, user + system, to its exit) are recorded beside
the wall times: on a machine shared with other jobs they move far less than wall time.

Prints a line per launch and per side, writes bench/results/startup_<date>_<cpu>.json, and ends with the
ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.launcher import ROOT, deepspeed_command, deepspeed_env, pretrain_command
from bench.targets import target_line

LAUNCH_TIMEOUT_S = 900
STEP1 = re.compile(r"\[rank 0\] INFO training\.loop: step 1/\d+ ")
NOOP_BARRIER = re.compile(r"^no-op: past the barrier$")
HOW = (
    "median launch to rank 0's step-1 line of pretrain_gpt.py / median launch to rank 0's line past the "
    "barrier of a no-op DeepSpeed launch (import torch + deepspeed, init_distributed, barrier), both read "
    "from the launcher's pipe, {n} launch(es) per side, alternating"
)


# ---- the no-op rank (runs under the deepspeed launcher) ----------------------------------------------


def noop_rank() -> None:
    """Import torch and deepspeed, join the process group as pretrain_gpt.py does, one barrier, leave."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # As launch.env.LaunchEnv.init_distributed: skip the 40-90 s JIT build of the CPU shm all-reduce op.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(
        dist_backend=get_accelerator().communication_backend_name(), auto_mpi_discovery=False
    )
    dist.barrier()
    if dist.get_rank() == 0:
        print("no-op: past the barrier", flush=True)
    dist.destroy_process_group()


# ---- the driver ----------------------------------------------------------------------------------------


def run_config(args: argparse.Namespace, data: Path, save_dir: Path) -> dict[str, Any]:
    """One step of bench/train_throughput.py's run (same model, data and batch), logged at step 1."""
    from bench.common import run_config_model

    return {
        "model": run_config_model(args),
        "data": {"paths": [str(data)], "seq_len": args.seq},
        "train": {
            "micro_batch": args.micro,
            "max_steps": 1,
            "precision": args.precision,
            "log_interval": 1,
            "eval_interval": 0,
            "save_interval": 10**9,
            "save_dir": str(save_dir),
        },
    }


def timed_launch(cmd: list[str], tmp: Path, marker: re.Pattern | None) -> dict[str, Any]:
    """One launch (bench.launcher's command), its caches under ``tmp``. Returns seconds from spawning the
    launcher to the first output line matching ``marker`` (None: not looked for) and to the launcher's
    exit; raises with the output's tail if it fails, never shows the marker, or runs over
    LAUNCH_TIMEOUT_S (its whole tree is killed)."""
    env = deepspeed_env(tmp, PYTHONUNBUFFERED="1")
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **pipe)
    watchdog = threading.Timer(LAUNCH_TIMEOUT_S, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    at_marker, lines = None, []
    try:
        for line in proc.stdout:
            if at_marker is None and marker is not None and marker.search(line):
                at_marker = time.perf_counter() - start
            lines.append(line)
        code = proc.wait()
        at_exit = time.perf_counter() - start
    finally:
        watchdog.cancel()
    cpu = _children_cpu_s() - cpu_before
    tail = "".join(lines)[-4000:]
    if code:
        raise RuntimeError(f"{' '.join(cmd)} exited {code} after {at_exit:.0f} s:\n{tail}")
    if marker is not None and at_marker is None:
        raise RuntimeError(f"{' '.join(cmd)} never printed a line matching {marker.pattern!r}:\n{tail}")
    return {"to_marker_s": at_marker, "to_exit_s": at_exit, "cpu_s": cpu}


def _children_cpu_s() -> float:
    """User + system CPU seconds of every finished descendant this process waited for (the launcher, and
    through it its ranks): a launch's CPU cost, which other jobs on the machine disturb far less than
    its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch_side(args: argparse.Namespace, side: str, data: Path, tmp: Path, k: int) -> dict[str, Any]:
    if side == "noop":
        noop = deepspeed_command("bench.startup", "--noop", ranks=args.ranks, module=True)
        t = timed_launch(noop, tmp, NOOP_BARRIER)
        return {"side": side, "seconds": t["to_marker_s"], "to_exit_s": t["to_exit_s"], "cpu_s": t["cpu_s"]}
    run_dir = tmp / f"ours_{k}"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(run_config(args, data, run_dir / "save")))
    t = timed_launch(pretrain_command(run_dir / "run.json", args.ds, ranks=args.ranks), tmp, STEP1)
    return {"side": side, "seconds": t["to_marker_s"], "to_exit_s": t["to_exit_s"], "cpu_s": t["cpu_s"]}


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "n": len(values),
    }


def measure(args: argparse.Namespace, data: Path, tmp: Path, out: Any) -> dict[str, Any]:
    """The warm-up launches, then the alternating timed ones; per-launch and per-side figures."""
    number = itertools.count()
    for k in range(args.warmup):
        for side in ("noop", "ours"):
            t = launch_side(args, side, data, tmp, next(number))
            out(f"warm-up {k + 1} {side:<5} {t['seconds']:6.1f} s (not counted)")
    launches = []
    for k in range(args.repeats):
        for side in ("noop", "ours") if k % 2 == 0 else ("ours", "noop"):
            t = launch_side(args, side, data, tmp, next(number))
            launches.append(t)
            event = "rank 0 past the barrier" if side == "noop" else "end of step 1"
            what = f"to {event} ({t['to_exit_s']:.1f} s to exit)"
            out(f"launch {len(launches):2d} {side:<5} {t['seconds']:6.1f} s {what}; {t['cpu_s']:.1f} CPU s")
    sides = {
        side: {
            **spread([x["seconds"] for x in launches if x["side"] == side]),
            "to_exit": spread([x["to_exit_s"] for x in launches if x["side"] == side]),
            "cpu": spread([x["cpu_s"] for x in launches if x["side"] == side]),
        }
        for side in ("noop", "ours")
    }
    return {
        "launches": launches,
        "sides": sides,
        "event": "rank 0's marker line read from the launcher's pipe (no-op: past the barrier; ours: step 1)",
        "ratio": sides["ours"]["median_s"] / sides["noop"]["median_s"],
        "cpu_ratio": sides["ours"]["cpu"]["median_s"] / sides["noop"]["cpu"]["median_s"],
        "ratio_to_exit": sides["ours"]["to_exit"]["median_s"] / sides["noop"]["to_exit"]["median_s"],
        "ratio_min_max": [
            sides["ours"]["min_s"] / sides["noop"]["max_s"],
            sides["ours"]["max_s"] / sides["noop"]["min_s"],
        ],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.common import add_training_shape_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    add_training_shape_args(p)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.precision")
    p.add_argument("--ds_config", dest="ds", default="ds_configs/zero2_cpu.json", help="DeepSpeed JSON")
    p.add_argument("--repeats", type=int, default=5, help="timed launches per side, alternating")
    p.add_argument("--warmup", type=int, default=1, help="untimed launches per side first")
    p.add_argument("--data", type=Path, help="shards to train on (default: built once, as train_throughput)")
    p.add_argument("--results-dir", type=Path, default=None, help="where the results JSON goes")
    p.add_argument("--noop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats ({args.repeats}) must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.noop:
        noop_rank()
        return 0
    from bench.common import RESULTS_DIR, Run, args_record

    harness = Run("bench.startup", argv)
    out = harness.out
    setting = (
        f"{args.ds}, {args.ranks} ranks x 1 thread, {args.layers} layers x {args.width}, seq {args.seq}, "
        f"micro-batch {args.micro}, train.precision {args.precision}"
    )
    out(f"run: {setting}; {args.warmup} warm-up + {args.repeats} timed launch(es) per side, alternating")
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        data = args.data
        if data is None:
            from bench.common import build_shards

            out("building shards (standard library, 8,192-id tokenizer) ...")
            data = build_shards(tmp / "shards")
        runs = tmp / "runs"
        runs.mkdir()
        result = measure(args, data.resolve(), runs, out)
    n, o = result["sides"]["noop"], result["sides"]["ours"]
    lo, hi = result["ratio_min_max"]
    out(
        f"no-op launch {n['median_s']:.1f} s ({n['min_s']:.1f}-{n['max_s']:.1f}) to rank 0 past the "
        "barrier | "
        f"ours {o['median_s']:.1f} s ({o['min_s']:.1f}-{o['max_s']:.1f}) to the end of step 1 | ratio "
        f"ours/no-op {result['ratio']:.2f}x (from the spreads {lo:.2f}-{hi:.2f}x)"
    )
    out(
        f"to exit, both sides: no-op {n['to_exit']['median_s']:.1f} s, ours {o['to_exit']['median_s']:.1f} s "
        f"(saving its checkpoint included): {result['ratio_to_exit']:.2f}x"
    )
    out(
        f"CPU seconds of a whole launch (launcher and ranks, to exit): no-op {n['cpu']['median_s']:.1f} "
        f"({n['cpu']['min_s']:.1f}-{n['cpu']['max_s']:.1f}) | ours {o['cpu']['median_s']:.1f} "
        f"({o['cpu']['min_s']:.1f}-{o['cpu']['max_s']:.1f}) | ratio {result['cpu_ratio']:.2f}x "
        "(less disturbed by other jobs than wall time; ours includes saving its checkpoint)"
    )
    out(target_line(["startup"]))
    table = [
        {
            "benchmark": "bench/startup.py",
            "setting": setting,
            "precision": args.precision,
            "native": "n/a",
            "baseline": f"no-op launch to its barrier {n['median_s']:.1f} s "
            f"({n['min_s']:.1f}-{n['max_s']:.1f})",
            "ours": f"launch to step 1 {o['median_s']:.1f} s ({o['min_s']:.1f}-{o['max_s']:.1f})",
            "ratio": round(result["ratio"], 3),
            "how": HOW.format(n=n["n"]),
        }
    ]
    harness.finish(
        precision=None,
        figures={"args": args_record(args), **result},
        table=table,
        final_line="ratio ours/no-op (launch to step 1 / no-op launch to its barrier): "
        f"{result['ratio']:.2f}x",
        results_dir=args.results_dir or RESULTS_DIR,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
