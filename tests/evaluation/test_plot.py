"""codeparrot-plot on real runs: two runs of pretrain_gpt.py (2 CPU ranks, DeepSpeed's launcher), one of them
resumed from its checkpoint, drawn into one PNG; and the refusals of what is not a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from evaluation.plot import SIZE_PX, draw, main, read_run, read_runs, run_names
from tests.training.conftest import ROOT, check, deepspeed_cmd, run, run_config
from training.run_files import RUN_CONFIG

SAMPLES_PER_STEP = 4  # micro-batch 2 x 2 data-parallel ranks
SEQ_LEN = 32  # run_config's
TOKENS_PER_STEP = SAMPLES_PER_STEP * SEQ_LEN


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Two train.save_dirs named alike, a/ckpt and b/ckpt: b is a run of 4 steps; a is the same run
    resumed from its step-4 checkpoint with train.max_steps 8 (about 25 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("plot_runs")
    (tmp / "a").mkdir()
    cfg = run_config(tmp / "a", tiny_data, max_steps=4, eval_interval=2, save_interval=4)
    check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp / "a"))
    shutil.copytree(tmp / "a" / "ckpt", tmp / "b" / "ckpt")
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json", "--set", "train.max_steps=8"), tmp / "a"))
    assert "resumed from" in result.stdout
    return tmp / "a" / "ckpt", tmp / "b" / "ckpt"


def lines_of(ax, gid: str) -> list:
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def panel(fig, title: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


@pytest.mark.slow
def test_the_trainer_marks_its_resume_in_metrics_jsonl(runs):
    resumed, _ = runs
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if "event" in r]
    assert events == [
        {"step": 4, "event": "resume", "consumed_samples": 16, "tokens": 512, "tag": "global_step4"}
    ]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4, 5, 6, 7, 8]  # the mark after step 4's record


@pytest.mark.slow
def test_two_runs_one_line_each_with_the_resume_marked(runs):
    resumed, plain = runs
    fig = draw(read_runs([resumed, plain]))
    loss = panel(fig, "training loss")
    train = lines_of(loss, "loss")
    assert [line.get_label() for line in train] == ["a/ckpt", "b/ckpt"]  # equal names told apart
    assert len({to_hex(line.get_color()) for line in train}) == 2
    assert list(train[0].get_xdata()) == [TOKENS_PER_STEP * s for s in range(1, 9)]
    assert list(train[1].get_xdata()) == [TOKENS_PER_STEP * s for s in range(1, 5)]
    # The resumed run's mark, in its colour, at the step-4 checkpoint; none for the run never resumed.
    (mark,) = lines_of(loss, "resume")
    assert list(mark.get_xdata()) == [4 * TOKENS_PER_STEP] * 2
    assert to_hex(mark.get_color()) == to_hex(train[0].get_color())
    valid = lines_of(panel(fig, "validation loss"), "valid_loss")
    assert [len(line.get_xdata()) for line in valid] == [4, 2]  # eval_interval 2
    for title, key in (
        ("learning rate", "lr"),
        ("gradient norm", "grad_norm"),
        ("tokens/s (all ranks)", "tokens_per_s"),
    ):
        assert len(lines_of(panel(fig, title), key)) == 2, title
    mfu = panel(fig, "MFU")  # a CPU run has no peak FLOP/s: the panel says so
    assert not lines_of(mfu, "mfu") and "MFU not recorded" in mfu.texts[0].get_text()


@pytest.mark.slow
def test_the_command_writes_one_png_of_its_size(runs, tmp_path, capsys, monkeypatch):
    resumed, plain = runs
    out = tmp_path / "both.png"
    assert main([str(resumed), str(plain), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    image = Image.open(out)
    assert image.format == "PNG" and image.size == SIZE_PX
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # lines, axes and text, not a blank canvas
    # The defaults: RUN_DIR/metrics.png for one run, ./runs.png for several.
    assert main([str(plain)]) == 0
    assert capsys.readouterr().out.strip() == str(plain / "metrics.png")
    monkeypatch.chdir(tmp_path)
    assert main([str(resumed), str(plain)]) == 0
    assert capsys.readouterr().out.strip() == "runs.png" and (tmp_path / "runs.png").is_file()


@pytest.mark.slow
def test_a_restart_without_a_mark_is_found_by_the_step_counter(runs, tmp_path):
    """A file from before the resume record: steps 1-4, then a restart from step 2 logging 3-8 again."""
    resumed, plain = runs
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(plain / RUN_CONFIG, old / RUN_CONFIG)
    first = (plain / "metrics.jsonl").read_text().splitlines()
    again = [x for x in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] >= 3]
    (old / "metrics.jsonl").write_text("\n".join(first + [x for x in again if "event" not in x]) + "\n")
    got = read_run(old)
    assert [s["step"] for s in got.steps] == list(range(1, 9))
    assert got.resumes == [2 * TOKENS_PER_STEP]


def refusal(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_what_is_not_a_run_is_refused_in_one_line(tmp_path, capsys):
    err = refusal(capsys, str(tmp_path / "missing"))
    assert f"{tmp_path / 'missing'} does not exist" in err
    err = refusal(capsys, str(tmp_path))
    assert f"{tmp_path} has no metrics.jsonl: not a training run's train.save_dir" in err
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.jsonl").write_text("")
    err = refusal(capsys, str(tmp_path))  # the run one level down is named
    assert f"({tmp_path / 'train'} has one: pass that)" in err
    err = refusal(capsys, str(tmp_path / "train"))
    assert f"{tmp_path / 'train' / 'metrics.jsonl'} holds no step record" in err


def test_names_of_runs_alike_and_the_module_imports_no_plotting(tmp_path):
    assert run_names([tmp_path / "a" / "x", tmp_path / "b" / "x", tmp_path / "y"]) == ["a/x", "b/x", "y"]
    assert run_names([tmp_path / "x", tmp_path / "x"]) == ["x (1)", "x (2)"]
    code = "import sys, evaluation.plot; assert not {'matplotlib', 'torch'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
