"""HumanEval scoring with real sandboxed processes: canonical solutions, wrong ones, resume, pass@k."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation.humaneval import build_program, pass_at_k, run_humaneval, select_problems
from evaluation.sandbox import Limits, Sandbox, probe_isolation

from .judging import ISOLATED, CountingSandbox


def canonical(problems: list[dict]):
    solutions = {p["prompt"]: p["canonical_solution"] for p in problems}

    def complete(prompts: list[str], n: int) -> list[list[str]]:
        complete.calls.append((len(prompts), n))
        return [[solutions[p]] * n for p in prompts]

    complete.calls = []
    return complete


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_problems_ship_with_the_package(problems: list[dict]) -> None:
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert [p["task_id"] for p in select_problems(problems, "3")] == [
        "HumanEval/0",
        "HumanEval/1",
        "HumanEval/2",
    ]
    assert [p["task_id"] for p in select_problems(problems, "7, HumanEval/5")] == [
        "HumanEval/7",
        "HumanEval/5",
    ]
    with pytest.raises(ValueError, match="unknown problem 'HumanEval/999'"):
        select_problems(problems, "HumanEval/999")


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 1, 1.0),
        (10, 3, 1, 0.3),
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (10, 3, 8, 1.0),  # n - c < k: every k-subset holds a pass
        (200, 1, 100, 0.5),  # 1 - C(199,100)/C(200,100) = 1 - 100/200
        (200, 17, 10, 1 - math.comb(183, 10) / math.comb(200, 10)),
    ],
)
def test_pass_at_k(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_canonical_solutions_pass(problems: list[dict], sandbox: Sandbox, tmp_path: Path) -> None:
    chosen = problems[:10]
    results = run_humaneval(canonical(chosen), tmp_path, sandbox=sandbox, n=1, problems=chosen, workers=2)
    assert results["pass@1"] == 1.0 and "pass@10" not in results
    samples = rows(tmp_path / "samples.jsonl")
    assert [(s["task_id"], s["verdict"]) for s in samples] == [(p["task_id"], "passed") for p in chosen]
    assert json.loads((tmp_path / "results.json").read_text())["pass@1"] == 1.0


def test_wrong_completions_score_zero(problems: list[dict], sandbox: Sandbox, tmp_path: Path) -> None:
    chosen = problems[:3]
    wrong = lambda prompts, n: [
        ["    return None\n", "    raise ValueError('no idea')\n"][:n] for _ in prompts
    ]
    results = run_humaneval(wrong, tmp_path, sandbox=sandbox, n=2, ks=(1, 2, 10), problems=chosen, workers=2)
    assert results["pass@1"] == 0.0 and results["pass@2"] == 0.0 and "pass@10" not in results
    verdicts = [s["verdict"] for s in rows(tmp_path / "samples.jsonl")]
    assert len(verdicts) == 6 and all(v.startswith("failed: ") for v in verdicts)
    assert "failed: ValueError: no idea" in verdicts


def test_resume_redoes_nothing(problems: list[dict], tmp_path: Path) -> None:
    chosen = problems[:6]
    complete = canonical(chosen)
    common = dict(n=2, problems=chosen, workers=1, prompts_per_call=2)
    allow = not ISOLATED

    def failing_on_third_call(prompts, n):
        if len(complete.calls) == 2:
            raise RuntimeError("generation interrupted")
        return complete(prompts, n)

    # 1) generation fails on the third call: problems 0-3 generated and judged.
    with pytest.raises(RuntimeError, match="generation interrupted"):
        run_humaneval(failing_on_third_call, tmp_path, sandbox=Sandbox(allow_unisolated=allow), **common)
    assert len(rows(tmp_path / "generations.jsonl")) == 8 and len(rows(tmp_path / "samples.jsonl")) == 8
    # 2) judging is interrupted on the second run of the last chunk; a torn row is left behind.
    counting = CountingSandbox(allow_unisolated=allow, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_humaneval(complete, tmp_path, sandbox=counting, **common)
    assert complete.calls == [(2, 2), (2, 2), (2, 2)]  # only problems 4 and 5 were generated again
    assert len(rows(tmp_path / "generations.jsonl")) == 12
    with (tmp_path / "samples.jsonl").open("a") as f:
        f.write('{"task_id": "HumanEval/5", "sam')
    judged = len((tmp_path / "samples.jsonl").read_text().splitlines()) - 1
    # 3) the resumed run generates nothing and judges only what has no verdict.
    counting = CountingSandbox(allow_unisolated=allow)
    results = run_humaneval(complete, tmp_path, sandbox=counting, **common)
    assert len(complete.calls) == 3 and counting.runs == 12 - judged
    assert results["pass@1"] == 1.0 and results["per_task"] == {p["task_id"]: 2 for p in chosen}
    keys = [(r["task_id"], r["sample"]) for r in _valid_rows(tmp_path / "samples.jsonl")]
    assert sorted(keys) == sorted({(p["task_id"], i) for p in chosen for i in range(2)})


def _valid_rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


@pytest.mark.skipif(not ISOLATED, reason=f"hostile programs need namespace isolation: {probe_isolation()}")
def test_hostile_samples_do_not_stop_the_evaluation(problems: list[dict], tmp_path: Path) -> None:
    problem = problems[0]
    hostile = [
        "    while True:\n        pass\n",
        "    import os\n    while True:\n        os.fork()\n",
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n",
        "    print('y' * 100_000_000)\n",
    ]
    samples = [*hostile, problem["canonical_solution"]]
    quick = Sandbox(Limits(timeout=3.0))  # the canonical solution must finish on a loaded machine
    results = run_humaneval(
        lambda prompts, n: [samples[:n]],
        tmp_path,
        sandbox=quick,
        n=5,
        ks=(1, 5),
        problems=[problem],
        workers=2,
    )
    verdicts = [r["verdict"] for r in rows(tmp_path / "samples.jsonl")]
    assert verdicts[0] == "timed out" and verdicts[-1] == "passed"
    assert verdicts[1].startswith(("failed", "killed", "timed out")) and verdicts[2].startswith("failed")
    assert verdicts[3].startswith("failed: AssertionError")  # printed 100 MB (capped), then returned None
    assert results["per_task"] == {problem["task_id"]: 1}
    assert results["pass@1"] == pytest.approx(0.2) and results["pass@5"] == 1.0
    assert "check(has_close_elements)" in build_program(problem, samples[-1])


def test_an_early_exit_does_not_forge_a_pass(problems: list[dict], sandbox: Sandbox, tmp_path: Path) -> None:
    """Completions that end the process with status 0 before check() has run to its end fail."""
    problem = problems[0]
    forged = [
        "    import os\n    os._exit(0)\n",  # on the first call of the function, inside check()
        "    return None\nimport os\nos._exit(0)\n",  # at module level, before check() is called
        "    import os, atexit\n    atexit.register(os._exit, 0)\n    raise SystemExit(0)\n",
    ]
    results = run_humaneval(
        lambda prompts, n: [forged[:n]],
        tmp_path,
        sandbox=sandbox,
        n=3,
        ks=(1,),
        problems=[problem],
        workers=1,
    )
    verdicts = [r["verdict"] for r in rows(tmp_path / "samples.jsonl")]
    assert verdicts[:2] == ["failed: the program exited with status 0 before its end"] * 2, verdicts
    assert verdicts[2].startswith("failed: SystemExit"), verdicts
    assert results["pass@1"] == 0.0
