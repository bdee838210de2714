"""HumanEval infilling: the tasks cut from the canonical solutions, scoring with real sandboxed processes
(an oracle scores 1, wrong middles 0), resume after an interruption, and codeparrot-eval infill end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import cli
from evaluation.infill import MAX_BLOCK_LINES, InfillTask, make_tasks, run_infill
from evaluation.sandbox import Sandbox, probe_isolation

from .judging import ISOLATED, CountingSandbox


def oracle(tasks: list[InfillTask], transform=lambda middle: middle):
    """A "model" that returns each task's removed text (through `transform`), recording its calls."""
    removed = {(t.prefix, t.suffix): t.middle for t in tasks}

    def fill(prefixes: list[str], suffixes: list[str]) -> list[str]:
        fill.calls.append(len(prefixes))
        return [transform(removed[p, s]) for p, s in zip(prefixes, suffixes, strict=True)]

    fill.calls = []
    return fill


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn line
    return out


def test_tasks_cut_the_canonical_program_deterministically(problems: list[dict]) -> None:
    tasks = make_tasks(problems, per_problem=3, seed=0)
    assert tasks == make_tasks(problems, per_problem=3, seed=0)  # the same holes, run after run
    assert tasks != make_tasks(problems, per_problem=3, seed=1)
    assert len({t.task_id for t in tasks}) == len(tasks)
    by_problem = {p["task_id"]: p for p in problems}
    for t in tasks:
        problem = by_problem[t.task_id.rsplit("/", 2)[0]]
        assert t.prefix + t.middle + t.suffix == problem["prompt"] + problem["canonical_solution"]
        lines = problem["canonical_solution"].splitlines(keepends=True)
        assert t.middle == "".join(lines[t.start : t.end]) and t.task_id.endswith(
            f"/{t.mode}/{t.start}:{t.end}"
        )
        assert t.prefix.startswith(problem["prompt"]) and t.prefix.endswith("\n")
        removed = t.middle.splitlines()
        assert removed[0].strip() and removed[-1].strip()  # a hole starts and ends with a non-blank line
        if t.mode == "single":
            assert len(removed) == 1
        else:
            assert 2 <= len(removed) <= MAX_BLOCK_LINES
    for problem in problems:
        for mode in ("single", "multi"):
            mine = [t for t in tasks if t.task_id.startswith(f"{problem['task_id']}/{mode}/")]
            assert len(mine) <= 3 and mine == sorted(mine, key=lambda t: t.start)
    single = [t for t in tasks if t.mode == "single"]
    assert len(single) == sum(
        min(3, sum(1 for s in p["canonical_solution"].splitlines() if s.strip())) for p in problems
    )
    assert sum(t.mode == "multi" for t in tasks) > 300  # most solutions have a block of 2+ lines
    # One mode, one task per problem: a subset of the same construction with those settings.
    assert make_tasks(problems[:5], ("multi",), per_problem=1) == [
        t for t in make_tasks(problems[:5], per_problem=1) if t.mode == "multi"
    ]
    with pytest.raises(ValueError, match=r"--per-problem \(0\) must be >= 1"):
        make_tasks(problems, per_problem=0)


def test_the_oracle_scores_one_and_wrong_middles_zero(
    problems: list[dict], sandbox: Sandbox, tmp_path: Path
) -> None:
    tasks = make_tasks(problems[:6], per_problem=1)
    assert {t.mode for t in tasks} == {"single", "multi"}
    results = run_infill(oracle(tasks), tmp_path / "oracle", sandbox=sandbox, tasks=tasks, workers=2)
    assert (results["pass_rate"], results["exact_match"], results["tasks"]) == (1.0, 1.0, len(tasks))
    assert {m: (r["pass_rate"], r["exact_match"]) for m, r in results["per_mode"].items()} == {
        "single": (1.0, 1.0),
        "multi": (1.0, 1.0),
    }
    samples = rows(tmp_path / "oracle" / "samples.jsonl")
    assert [(s["task_id"], s["verdict"], s["exact_match"]) for s in samples] == [
        (t.task_id, "passed", True) for t in tasks
    ]
    saved = json.loads((tmp_path / "oracle" / "results.json").read_text())
    assert saved["per_task"] == {t.task_id: {"passed": True, "exact_match": True} for t in tasks}

    # A syntax error neither passes nor matches.
    wrong = run_infill(
        oracle(tasks, lambda m: "    )(\n"), tmp_path / "wrong", sandbox=sandbox, tasks=tasks, workers=2
    )
    assert (wrong["pass_rate"], wrong["exact_match"]) == (0.0, 0.0)
    verdicts = [s["verdict"] for s in rows(tmp_path / "wrong" / "samples.jsonl")]
    assert all(v.startswith("failed: SyntaxError") for v in verdicts), verdicts
    # The removed text without its indentation and newline matches exactly but is not the program.
    stripped = run_infill(
        oracle(tasks, str.strip), tmp_path / "stripped", sandbox=sandbox, tasks=tasks, workers=2
    )
    assert (stripped["pass_rate"], stripped["exact_match"]) == (0.0, 1.0)


def test_resume_fills_and_judges_only_what_is_missing(problems: list[dict], tmp_path: Path) -> None:
    tasks = make_tasks(problems[:6], per_problem=1)[:8]  # 2 per call
    assert len(tasks) == 8
    fill = oracle(tasks)
    allow = not ISOLATED
    common = dict(tasks=tasks, workers=1, tasks_per_call=2, identity={"model": "m", "weights_sha256": "a"})

    def failing_on_third_call(prefixes, suffixes):
        if len(fill.calls) == 2:
            raise RuntimeError("generation interrupted")
        return fill(prefixes, suffixes)

    # 1) generation fails on the third call: tasks 0-3 filled and judged.
    with pytest.raises(RuntimeError, match="generation interrupted"):
        run_infill(failing_on_third_call, tmp_path, sandbox=Sandbox(allow_unisolated=allow), **common)
    assert len(rows(tmp_path / "generations.jsonl")) == 4 and len(rows(tmp_path / "samples.jsonl")) == 4
    # 2) judging is interrupted on the second run of the third chunk; a torn row is left behind.
    with pytest.raises(KeyboardInterrupt):
        run_infill(fill, tmp_path, sandbox=CountingSandbox(allow_unisolated=allow, fail_at=2), **common)
    assert fill.calls == [2, 2, 2]  # only tasks 4 and 5 were filled again
    with (tmp_path / "samples.jsonl").open("a") as f:
        f.write('{"task_id": "HumanEval/2/single/0:1", "mid')
    judged = len(rows(tmp_path / "samples.jsonl"))
    assert judged == 5
    # 3) the resumed run fills tasks 6 and 7 and judges only what has no verdict.
    counting = CountingSandbox(allow_unisolated=allow)
    results = run_infill(fill, tmp_path, sandbox=counting, **common)
    assert fill.calls == [2, 2, 2, 2] and counting.runs == len(tasks) - judged
    assert (results["pass_rate"], results["exact_match"], results["tasks"]) == (1.0, 1.0, 8)
    assert sorted(r["task_id"] for r in rows(tmp_path / "samples.jsonl")) == sorted(t.task_id for t in tasks)
    # Another model's weights (or other settings) may not add to these records.
    with pytest.raises(ValueError, match=r"holds the samples of model m \(weights sha256 a; \)"):
        run_infill(
            fill, tmp_path, sandbox=counting, **{**common, "identity": {"model": "m", "weights_sha256": "b"}}
        )


@pytest.mark.skipif(not ISOLATED, reason=f"a model's middles run only isolated: {probe_isolation()}")
def test_codeparrot_eval_infill_on_an_exported_model(
    problems: list[dict], make_export, data_tokenizer, tmp_path, capsys
) -> None:
    """A random tiny model (context 128: the prompts are cut around the hole) through the console command;
    a second run finds everything done."""
    model = make_export(data_tokenizer, seed=0)
    out = tmp_path / "infill"
    cmd = ["infill", str(model), "--out", str(out), "--problems", "0,HumanEval/3", "--per-problem", "2"]
    cmd += ["--max-new-tokens", "8", "--workers", "2"]
    assert cli.main(cmd) == 0
    printed = json.loads(capsys.readouterr().out)
    tasks = make_tasks([problems[0], problems[3]], per_problem=2)
    assert printed["tasks"] == len(tasks) == 8 and set(printed["per_mode"]) == {"single", "multi"}
    assert 0.0 <= printed["pass_rate"] <= 1.0 and 0.0 <= printed["exact_match"] <= 1.0
    samples = (out / "samples.jsonl").read_text()
    assert [r["task_id"] for r in rows(out / "samples.jsonl")] == [t.task_id for t in tasks]
    assert all(r["verdict"] for r in rows(out / "samples.jsonl"))
    run = json.loads((out / "run.json").read_text())
    assert run["sampling"] == {"decoding": "greedy", "max_new_tokens": 8}
    assert run["tasks"] == {"seed": 0, "per_problem": 2, "max_block_lines": MAX_BLOCK_LINES}

    assert cli.main(cmd) == 0  # resumed: nothing filled or judged again, the same scores
    assert (out / "samples.jsonl").read_text() == samples
    assert json.loads(capsys.readouterr().out) == printed
    with pytest.raises(SystemExit) as exited:  # other tasks under the same name are refused
        cli.main([*cmd, "--task-seed", "1"])
    assert exited.value.code == 2
    assert "holds the samples of model" in capsys.readouterr().err
