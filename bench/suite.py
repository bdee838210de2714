"""The whole benchmark suite in one command, one JSON report: `make bench`.

    python -m bench.suite                          # every benchmark, about 20 minutes on 2 cores
    python -m bench.suite --only generate,startup  # some of them
    python -m bench.suite --quick --only generate  # toy sizes: a smoke test of the suite itself

Runs each benchmark as its own subprocess (`python -m bench.<name>` from the repository root), one after
another, in this order: preprocess, data_loading, model_step, train_throughput (eager at a 32,768
vocabulary, then --compile at the default shape), startup, generate (a toy shape, then codeparrot-small's).
The settings below keep the whole suite near 30 minutes on a 2-core machine; every figure keeps its spread (at
least 2 runs or launches per side, where the benchmark has repeats). Each benchmark writes its own results
JSON (bench/common.finish, the path printed as `results: <path>`); the suite reads it back and writes

    bench/results/suite_<date>_<cpu tag>.json

with the machine and versions, the command, and per benchmark: its status (ok, failed with its stderr's
tail, timeout, or missing when the module does not exist), its results path, its final line and its
ratios with their spreads. The summary lists every figure; only the project's targets (bench/targets.py:
preprocessing against the `tokenizers` limit, training ours/HF+DeepSpeed and MFU, start-up against a no-op
launch) are judged and counted (met, missed, or not distinguishable when the spread reaches across the
target), every other figure (data loading headroom, model step, generation) is listed as "no target". A
preprocessing run above the ceiling of the encoder it ran is flagged "ceiling exceeded": the ceiling is
then no ceiling.

Prints each benchmark's output as it runs, then the summary table and the report's path; the last line
sums it up. Exits 1 when a benchmark failed or timed out, else 0 (a missed target is reported, not an
error). A failing benchmark does not stop the suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.targets import PREPROCESS_TARGETS, TARGETS, training_targets

TIMEOUT_S = 1800  # per benchmark
QUICK_TIMEOUT_S = 600
STDERR_TAIL = 3000  # characters of a failed benchmark's stderr kept in the report
RESULTS_LINE = re.compile(r"^results: (\S.*)$")
RATIO_IN_LINE = re.compile(r"(\d+(?:\.\d+)?)x\s*$")
COUNTED = ("met", "missed", "not distinguishable", "not reported")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Benchmark:
    name: str
    module: str  # run as `python -m <module>` from the repository root
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    ratios: Callable[[dict[str, Any]], list[dict[str, Any]]]  # results JSON -> summary entries

    @property
    def script(self) -> str:
        """The module's file, relative to the repository root where it lies there."""
        spec = importlib.util.find_spec(self.module)
        path = Path(spec.origin) if spec and spec.origin else Path(*self.module.split(".")).with_suffix(".py")
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    def exists(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


# ---- a benchmark's results JSON -> its ratios ------------------------------------------------------------


def entry(
    figure: str,
    value: float | None,
    target: str | None,
    spread: Sequence[float] | None = None,
    note: str = "",
    unit: str = "x",
) -> dict[str, Any]:
    """One summary line: a figure, its spread (min-max, None where the benchmark keeps none), its target
    and its status: "met", "missed", "not distinguishable" (the spread crosses the target), "not
    reported" when absent, "no target"."""
    t = TARGETS.get(target) if target else None
    if value is None:
        status = "not reported" if t else "no target"
    elif t is None:
        status = "no target"
    else:
        status = t.judge(value, spread)
    return {
        "figure": figure,
        "value": value,
        "unit": t.unit if t else unit,
        "spread": list(spread) if spread is not None else None,
        "target": str(t) if t else None,
        "target_key": target,
        "status": status,
        "note": note,
    }


def _find_keys(tree: Any, pattern: re.Pattern, path: str = "") -> list[tuple[str, float]]:
    """(path, value) of every number in ``tree`` whose key path matches ``pattern``."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += _find_keys(v, pattern, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and pattern.search(path):
        found.append((path, float(tree)))
    return found


def preprocess_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per corpus and mode: ours / the `tokenizers` limit (the targets) and ours / the ceiling of the encoder
    ours ran (flagged "ceiling exceeded" above 1); the spreads from every run of each side."""
    corpora = record["figures"].get("corpora", {})
    out = []
    for name, fig in corpora.items():
        note = f"each side its best of {fig.get('repeats', '?')} runs"
        for mode, label in (("tokenize_only", "tokenize-only"), ("whole_job", "whole job")):
            target = PREPROCESS_TARGETS[mode]
            f = fig.get(mode)
            if f is None:
                out.append(entry(f"{name}: {label} / tokenizers limit", None, target))
                continue
            encoder = f.get("encoder", "tokenizers")
            mode_note = f"{note}; ours encoded with {encoder}"
            spread = _best_of_spread(f)
            out.append(
                entry(f"{name}: {label} / tokenizers limit", f.get("ratio"), target, spread, mode_note)
            )
            if f.get("ceiling_ratio") is not None:
                e = entry(
                    f"{name}: {label} / {encoder} ceiling",
                    f["ceiling_ratio"],
                    None,
                    _best_of_spread(f, "ceiling"),
                    f"the best {encoder} encoding of the same documents in memory",
                )
                if f["ceiling_ratio"] > 1.0:
                    e["status"] = "ceiling exceeded"
                out.append(e)
    return out


def _best_of_spread(mode: dict[str, Any] | None, baseline: str = "limit") -> list[float] | None:
    """[slowest ours / fastest baseline, fastest ours / slowest baseline] over the runs of one corpus and
    mode (baseline "limit" or "ceiling")."""
    try:
        walls = {side: [r["wall_s"] for r in mode[side]["runs"]] for side in ("ours", baseline)}
        tokens = {side: mode[side]["tokens"] for side in ("ours", baseline)}
    except (TypeError, KeyError):
        return None
    rate = {side: (tokens[side] / max(w), tokens[side] / min(w)) for side, w in walls.items()}
    return [rate["ours"][0] / rate[baseline][1], rate["ours"][1] / rate[baseline][0]]


def data_loading_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The headroom: figures named headroom (a number, or a dict with ratio/median and min/max), else the
    table's ratios, else the final line's."""
    figures = record.get("figures", {})
    out = []
    for path, value in _find_keys(figures, re.compile(r"headroom(\.(ratio|median\w*))?$", re.I)):
        parent = figures
        for part in path.split(".")[:-1]:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        lo = parent.get("min") if isinstance(parent, dict) else None
        hi = parent.get("max") if isinstance(parent, dict) else None
        spread = [lo, hi] if lo is not None and hi is not None else None
        out.append(entry(f"headroom ({path})", value, None, spread))
    if not out:
        for row in record.get("table", []):
            out.append(entry(f"{row['setting']}", row["ratio"], None, note=row["how"]))
    if not out:
        out.append(entry("headroom (final line)", final_ratio(record), None))
    return out


def model_step_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p, fig in record["figures"]["precisions"].items():
        for mode, m in fig["modes"].items():
            note = "" if fig.get("native", True) else "not native here (reduced size)"
            out.append(entry(f"{p} {mode}: ours/hf step", m["ratio"], None, note=note))
    return out


def train_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per precision: ours/hf tokens/s and MFU against both peaks; targets only where it runs natively."""
    compiled = bool(record["figures"]["args"].get("compile"))
    mode = "compiled" if compiled else "eager"
    out = []
    for p, r in record["figures"]["precisions"].items():
        o, h, peak = r["sides"]["ours"], r["sides"]["hf"], r["peak"]
        targets = training_targets(p, compiled, r["native"])
        note = "" if r["native"] else "not native here (reduced size): no target"
        spread = [o["min_tps"] / h["max_tps"], o["max_tps"] / h["min_tps"]]
        out.append(entry(f"{p} {mode}: ours/hf tok/s", r["ratio"], targets.get("ratio"), spread, note))
        large = f"large-matmul peak {peak['best_gflops']:,.1f} GFLOP/s measured"
        mfu_target = targets.get("mfu_large")
        out.append(
            entry(f"{p} {mode}: MFU of the large-matmul peak", o["mfu"], mfu_target, note=large, unit="%")
        )
        achievable = peak.get("achievable_gflops")
        if achievable:
            mfu_target = targets.get("mfu_achievable")
            note_a = (
                f"achievable peak {achievable:,.1f} GFLOP/s (the model's own matmul shapes); "
                f"hf {h['mfu_achievable']:.1%}"
            )
            label = f"{p} {mode}: MFU of the achievable peak"
            out.append(entry(label, o["mfu_achievable"], mfu_target, note=note_a, unit="%"))
    return out


def startup_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    f = record["figures"]
    n, o = f["sides"]["noop"], f["sides"]["ours"]
    note = (
        f"no-op {n['median_s']:.1f} s to its barrier, ours {o['median_s']:.1f} s to step 1 "
        f"(medians of {n['n']})"
    )
    label = "launch to step 1 / no-op launch to its barrier"
    out = [entry(label, f["ratio"], "startup", f["ratio_min_max"], note)]
    if "ratio_to_exit" in f:
        out.append(
            entry("launch to exit, ours / no-op", f["ratio_to_exit"], None, note="ours saves a checkpoint")
        )
    if "cpu_ratio" in f:
        out.append(
            entry("CPU s of a launch, ours / no-op", f["cpu_ratio"], None, note="launcher and ranks, to exit")
        )
    return out


def generate_ratios(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per length: transformers/ours and no-cache/cache (where the no-cache baseline ran); no target."""
    f = record["figures"]
    args = f.get("args", {})
    shape = f"{args.get('layers', '?')}x{args.get('width', '?')}, vocab {args.get('vocab', '?')}"
    attention = f.get("attention")
    attn = f"; attention ours {attention['ours']}, transformers {attention['hf']}" if attention else ""
    out = []
    for row in f["rows"]:
        n, c = row["new_tokens"], row["cache"]
        for key, side, same in (("hf_ratio", "hf", "hf_same_tokens"), ("ratio", "no_cache", "same_tokens")):
            b = row.get(side)
            if not b:
                continue
            spread = [
                b["min_ms_per_token"] / c["max_ms_per_token"],
                b["max_ms_per_token"] / c["min_ms_per_token"],
            ]
            label = "transformers/ours" if side == "hf" else "no-cache/cache"
            note = ("same tokens" if row[same] else "tokens differ") + attn
            out.append(entry(f"{shape}, {n} new tokens: {label}", row[key], None, spread, note))
    return out


def final_ratio(record: dict[str, Any]) -> float | None:
    m = RATIO_IN_LINE.search((record.get("printed") or [""])[-1])
    return float(m[1]) if m else None


# ---- the suite ---------------------------------------------------------------------------------------------

# Toy model sizes for --quick (seconds per benchmark where the benchmark allows it).
TINY_TRAIN = ("--layers", "1", "--width", "32", "--heads", "2", "--seq-len", "32", "--micro-batch", "1")

BENCHMARKS = (
    Benchmark(
        name="preprocess",
        module="bench.preprocess",
        args=("--repeats", "2"),
        quick_args=("--copies", "1", "--vocab-size", "512", "--repeats", "1"),
        ratios=preprocess_ratios,
    ),
    Benchmark(
        name="data_loading",
        module="bench.data_loading",
        args=(),
        quick_args=(*TINY_TRAIN, "--batches", "5", "--warmup", "1", "--steps", "1", "--step-repeats", "2"),
        ratios=data_loading_ratios,
    ),
    Benchmark(
        name="model_step",
        module="bench.model_step",
        args=(),
        quick_args=(
            *(
                "--layers",
                "1",
                "--width",
                "32",
                "--heads",
                "2",
                "--seq-len",
                "16",
                "--vocab-size",
                "100",
                "--micro-batch",
                "2",
            ),
            *("--warmup", "1", "--steps", "2", "--rounds", "1"),
        ),
        ratios=model_step_ratios,
    ),
    Benchmark(
        name="train_throughput",
        module="bench.train_throughput",
        # The 1.5B configs' vocabulary, where the LM head is most of the FLOPs: 4 x 256, 8 heads, seq 256,
        # vocabulary 32,768, micro-batch 8, 2 ranks x 1 thread.
        args=("--vocab-size", "32768", "--heads", "8", "--micro-batch", "8"),
        quick_args=(*TINY_TRAIN, "--steps", "2", "--warmup", "1", "--repeats", "1", "--precision", "fp32"),
        ratios=train_ratios,
    ),
    Benchmark(
        name="train_throughput_compiled",
        module="bench.train_throughput",
        # The compiled pair in the precision auto picks here ({auto}), 2 launches per side: the first
        # launch compiles cold (about a minute on 2 cores), the later ones from the shared cache.
        args=("--compile", "--repeats", "2", "--precision", "{auto}"),
        quick_args=(
            *TINY_TRAIN,
            "--compile",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--precision",
            "fp32",
        ),
        ratios=train_ratios,
    ),
    Benchmark(
        name="startup",
        module="bench.startup",
        args=("--repeats", "3"),
        quick_args=(*TINY_TRAIN, "--repeats", "1", "--warmup", "0", "--precision", "fp32"),
        ratios=startup_ratios,
    ),
    Benchmark(
        name="generate",
        module="bench.generate",
        args=("--repeats", "3"),
        quick_args=(
            *("--layers", "1", "--width", "32", "--heads", "2", "--vocab-size", "64", "--ctx", "64"),
            *("--prompt", "4", "--lengths", "4", "8", "--repeats", "2"),
        ),
        ratios=generate_ratios,
    ),
    Benchmark(
        name="generate_small",
        module="bench.generate",
        # codeparrot-small's shape: the model's matmuls, not framework overhead; the no-cache baseline
        # only at the short length (it grows with the square of the length).
        args=(
            *("--layers", "12", "--width", "768", "--heads", "12", "--vocab-size", "32768"),
            *("--lengths", "32", "128", "--no-cache-up-to", "32", "--repeats", "3"),
        ),
        quick_args=(
            *("--layers", "1", "--width", "32", "--heads", "2", "--vocab-size", "64", "--ctx", "64"),
            *("--prompt", "4", "--lengths", "4", "8", "--no-cache-up-to", "4", "--repeats", "2"),
        ),
        ratios=generate_ratios,
    ),
)


def auto_precision() -> str:
    """What train.precision "auto" picks here for bench.train_throughput's model (1 thread per rank)."""
    from bench.common import precision_support

    _, auto = precision_support(256, 4 * 256, threads=1)
    return auto.precision


def run_one(
    bench: Benchmark, args: list[str], results_dir: Path | None, timeout: float, out
) -> dict[str, Any]:
    """Run one benchmark as a subprocess, its output echoed; its record for the report."""
    cmd = [sys.executable, "-m", bench.module, *args]
    record: dict[str, Any] = {"name": bench.name, "script": bench.script, "command": cmd[1:], "results": None}
    if not bench.exists():
        out(f"== {bench.name}: {bench.module} does not exist: recorded as missing")
        return {**record, "status": "missing", "seconds": 0.0, "ratios": []}
    if results_dir is not None and "--results-dir" in (ROOT / bench.script).read_text():
        cmd += ["--results-dir", str(results_dir)]
        record["command"] = cmd[1:]
    out(f"== {bench.name}: {' '.join(cmd[1:])}")
    start = time.perf_counter()
    results, lines = None, []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        timer = _Deadline(proc, timeout)
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(f"   {line}", flush=True)
            m = RESULTS_LINE.match(line)
            if m:
                results = m[1]
        code = proc.wait()
        timer.cancel()
        err.seek(0)
        stderr_tail = err.read()[-STDERR_TAIL:]
    seconds = time.perf_counter() - start
    record.update(seconds=seconds, final_line=lines[-1] if lines else None)
    if timer.fired:
        out(f"== {bench.name}: ran over {timeout:.0f} s, killed")
        return {**record, "status": "timeout", "stderr_tail": stderr_tail, "ratios": []}
    if code != 0 or results is None:
        why = f"exited {code}" if code else "printed no 'results: <path>' line"
        out(f"== {bench.name}: failed ({why}) after {seconds:.0f} s; stderr tail:\n{stderr_tail[-800:]}")
        return {**record, "status": "failed", "exit_code": code, "stderr_tail": stderr_tail, "ratios": []}
    path = Path(results) if Path(results).is_absolute() else ROOT / results
    try:
        ratios = bench.ratios(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        out(f"== {bench.name}: its results {path} could not be read: {type(e).__name__}: {e}")
        return {
            **record,
            "status": "failed",
            "results": results,
            "stderr_tail": f"{type(e).__name__}: {e}",
            "ratios": [],
        }
    out(f"== {bench.name}: done in {seconds:.0f} s")
    return {**record, "status": "ok", "results": results, "ratios": ratios}


class _Deadline:
    """Kills ``proc`` after ``seconds`` (then ``fired``)."""

    def __init__(self, proc: subprocess.Popen, seconds: float) -> None:
        import threading

        self.fired = False
        self._proc = proc
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._proc.kill()

    def cancel(self) -> None:
        self._timer.cancel()


def format_value(e: dict[str, Any]) -> str:
    if e["value"] is None:
        return "-"
    pct = e["unit"] == "%"
    v = f"{e['value']:.1%}" if pct else f"{e['value']:.2f}x"
    if e["spread"]:
        lo, hi = e["spread"]
        v += f" ({lo:.1%}-{hi:.1%})" if pct else f" ({lo:.2f}-{hi:.2f})"
    return v


def summary_rows(benchmarks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for b in benchmarks:
        if b["status"] != "ok":
            last = (b.get("stderr_tail") or "").strip().splitlines()[-1:] or [f"{b['script']} not found"]
            why = last[0][:100]
            rows.append(
                {"benchmark": b["name"], **entry(b["status"], None, None, note=why), "status": b["status"]}
            )
            continue
        rows += [{"benchmark": b["name"], **e} for e in b["ratios"]]
    return rows


def summary_table(rows: list[dict[str, Any]]) -> list[str]:
    cols = [
        (r["benchmark"], r["figure"], format_value(r), r["target"] or "-", r["status"], r["note"])
        for r in rows
    ]
    head = ("benchmark", "figure", "value (spread)", "target", "status", "note")
    widths = [max(len(str(c[i])) for c in [head, *cols]) for i in range(5)]
    fmt = lambda c: "  ".join(str(x).ljust(w) for x, w in zip(c[:5], widths, strict=True)) + f"  {c[5]}"  # noqa: E731
    return [fmt(head).rstrip(), "  ".join("-" * w for w in widths), *(fmt(c).rstrip() for c in cols)]


def one_line(benchmarks: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> str:
    count = lambda key, items, value: sum(1 for x in items if x[key] == value)  # noqa: E731
    ran = ", ".join(f"{count('status', benchmarks, s)} {s}" for s in ("ok", "failed", "timeout", "missing"))
    targets = [r for r in rows if r.get("target_key") in TARGETS and r["status"] in COUNTED]
    met = ", ".join(f"{count('status', targets, s)} {s}" for s in COUNTED)
    flagged = count("status", rows, "ceiling exceeded")
    flags = f"; {flagged} ceiling exceeded" if flagged else ""
    return f"suite: {len(benchmarks)} benchmarks ({ran}); targets: {met}{flags}; report {path.name}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [b.name for b in BENCHMARKS]
    p.add_argument("--only", help=f"comma-separated benchmarks to run, of: {', '.join(names)}")
    p.add_argument("--quick", action="store_true", help="toy sizes and one repeat: a smoke test, not figures")
    p.add_argument(
        "--results-dir", type=Path, default=None, help="where every results JSON and the report go"
    )
    args = p.parse_args(argv)
    if args.only:
        args.only = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in args.only if x not in names]
        if unknown:
            p.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return args


def git_commit() -> str | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def main(argv: Sequence[str] | None = None, benchmarks: Sequence[Benchmark] = BENCHMARKS) -> int:
    args = parse_args(argv)
    from bench.common import RESULTS_DIR, Run, now, results_path

    harness = Run("bench.suite", argv)  # its report is its own, not a benchmark's results JSON
    out = harness.out
    chosen = [b for b in benchmarks if not args.only or b.name in args.only]
    auto = None
    results_dir = args.results_dir or RESULTS_DIR
    records = []
    for bench in chosen:
        bench_args = list(bench.quick_args if args.quick else bench.args)
        if any("{auto}" in a for a in bench_args):
            auto = auto or auto_precision()
            bench_args = [a.replace("{auto}", auto) for a in bench_args]
        timeout = QUICK_TIMEOUT_S if args.quick else TIMEOUT_S
        records.append(run_one(bench, bench_args, results_dir, timeout, out))
    rows = summary_rows(records)
    for line in summary_table(rows):
        out(line)
    path = results_path(results_dir, "suite", harness.started, harness.machine["cpu_tag"])
    report = {
        "schema": 1,
        "benchmark": "suite",
        "command": harness.command,
        "started": harness.started,
        "finished": now(),
        "machine": harness.machine,
        "git_commit": git_commit(),
        "quick": args.quick,
        "only": args.only,
        "auto_precision": auto,
        "targets": {k: str(t) for k, t in TARGETS.items()},
        "benchmarks": records,
        "summary": rows,
        "table": [],  # bench/report.py reads every results JSON; the rows come from each benchmark's own
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    resolved = path.resolve()
    out(f"report: {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
    print(one_line(records, rows, path), flush=True)
    return 1 if any(r["status"] in ("failed", "timeout") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
