"""Render the benchmark table of docs/benchmarks.md from bench/results/*.json, or check or update a copy.

    python -m bench.report                              # print the table block, markers included
    python -m bench.report --check docs/benchmarks.md   # exit 1 with a diff if its block differs
    python -m bench.report --update docs/benchmarks.md  # rewrite the block between the markers in place

The block sits between the lines `<!-- bench:begin -->` and `<!-- bench:end -->`. It has one row per
benchmark x setting x precision x machine, built from the `table` rows that each results JSON carries
(bench/common.finish writes them); where several runs hold the same row, the newest run's row is shown.
Above it, the targets (bench/targets.py); below it, the results files the rows come from.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT
from bench.targets import TARGETS

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
COLUMNS = (
    "benchmark",
    "setting",
    "machine",
    "precision",
    "native",
    "baseline",
    "ours",
    "ratio",
    "how computed",
)


class BlockError(ValueError):
    """A file lacks the table markers, or holds them out of order."""


def load(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every results JSON in ``results_dir``, oldest run first."""
    records = [(p, json.loads(p.read_text())) for p in sorted(Path(results_dir).glob("*.json"))]
    return sorted(records, key=lambda r: (r[1]["started"], r[0].name))


def machine_label(machine: dict[str, Any]) -> str:
    bf16 = "+".join(machine["bf16_flags"]) or f"no bf16 flags, {machine['torch_cpu_capability']}"
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine['cpu_model']} ({bf16}), {machine['cores']} cores{gpu}"


def shown_path(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path.name


def collect(records: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The table's rows: one per benchmark x setting x precision x machine, the newest run's winning."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, record in records:
        machine = machine_label(record["machine"])
        for row in record["table"]:
            key = (row["benchmark"], row["setting"], row["precision"], machine)
            rows[key] = {**row, "machine": machine, "source": shown_path(path)}
    # Grouped by benchmark and machine; within a group, in the order the runs printed their rows.
    order = {key: i for i, key in enumerate(rows)}
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[3], order[k]))]


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(records: list[tuple[Path, dict[str, Any]]]) -> str:
    """The Markdown block, markers included."""
    rows = collect(records)
    lines = [BEGIN, "", "The targets (`bench/targets.py`, which the suite judges by):", ""]
    lines += ["| figure | target |", "|---|---|", *(f"| {t.figure} | {t} |" for t in TARGETS.values()), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        values = (
            f"`{r['benchmark']}`",
            r["setting"],
            r["machine"],
            r["precision"],
            r["native"],
            r["baseline"],
            r["ours"],
            f"{r['ratio']:.2f}x",
            r["how"],
        )
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    if not rows:
        lines.append("| " + " | ".join(["(no results)"] + [""] * (len(COLUMNS) - 1)) + " |")
    sources = sorted({r["source"] for r in rows})
    lines += [
        "",
        "From " + ", ".join(f"`{s}`" for s in sources) + "." if sources else "From no results.",
        END,
    ]
    return "\n".join(lines) + "\n"


def split_block(text: str, name: str) -> tuple[str, str, str]:
    """(before, block, after) of ``text``, the block running from BEGIN's line through END's line."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise BlockError(
            f"{name} has no table block: it needs a line {BEGIN} and, after it, a line {END}; put them where "
            "the table goes and run `python -m bench.report --update` on it"
        )
    end += len(END)
    if text[end : end + 1] == "\n":
        end += 1
    return text[:start], text[start:end], text[end:]


def check(path: Path, rendered: str) -> list[str]:
    """The diff between ``path``'s block and ``rendered`` (empty when they are the same)."""
    _, block, _ = split_block(path.read_text(), str(path))
    if block.rstrip("\n") == rendered.rstrip("\n"):
        return []
    return list(
        difflib.unified_diff(
            block.splitlines(), rendered.splitlines(), f"{path} (now)", "rendered from results", lineterm=""
        )
    )


def update(path: Path, rendered: str) -> bool:
    """Replace ``path``'s block with ``rendered``; whether the file changed."""
    text = path.read_text()
    before, _, after = split_block(text, str(path))
    new = before + rendered + after
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of results JSON files")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block differs")
    mode.add_argument("--update", type=Path, metavar="FILE", help="rewrite FILE's block")
    args = p.parse_args(argv)
    rendered = render(load(args.results))
    if args.check:
        try:
            diff = check(args.check, rendered)
        except BlockError as e:  # a missing block is a mismatch too
            diff = [str(e)]
        if diff:
            print(f"{args.check}: the benchmark table differs from {args.results}/*.json:", file=sys.stderr)
            print("\n".join(diff), file=sys.stderr)
            print(f"run: python -m bench.report --update {args.check}", file=sys.stderr)
            return 1
        print(f"{args.check}: the benchmark table matches the results")
        return 0
    if args.update:
        changed = update(args.update, rendered)
        print(f"{args.update}: {'table updated' if changed else 'already up to date'}")
        return 0
    sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
