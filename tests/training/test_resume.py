"""Kill a rank with SIGKILL mid-run, resume: every later loss equals the uninterrupted run's, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from .conftest import ROOT, check, deepspeed_cmd, env, losses, run, run_config

pytestmark = pytest.mark.slow

MODES = {
    "zero2": ("zero2_cpu.json", {}),
    "zero3": ("zero3_cpu.json", {}),
    "pipeline_zero1": ("pipeline_zero1_cpu.json", {"pipeline_stages": 2, "grad_accum": 2}),
}


def rank_processes(launcher: subprocess.Popen) -> list[psutil.Process]:
    procs = psutil.Process(launcher.pid).children(recursive=True)
    return [
        p
        for p in procs
        if "pretrain_gpt.py" in " ".join(p.cmdline()) and "--local_rank" in " ".join(p.cmdline())
    ]


def config_with_dropout(tmp_path, data, **train):
    path = run_config(tmp_path, data, max_steps=16, save_interval=2, eval_interval=4, **train)
    cfg = json.loads(path.read_text())
    cfg["model"]["overrides"] = {"embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1}  # RNG must resume
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_then_resume_is_bit_exact(tiny_data, tmp_path, mode):
    ds_config, train = MODES[mode]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    check(run(deepspeed_cmd(config_with_dropout(ref_dir, tiny_data, **train), ds_config), ref_dir))
    reference = losses(ref_dir / "ckpt")

    cmd = deepspeed_cmd(config_with_dropout(cut_dir, tiny_data, **train), ds_config)
    launcher = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(cut_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = cut_dir / "ckpt" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and launcher.poll() is None:
        if latest.exists() and int(latest.read_text().strip().removeprefix("global_step")) >= 6:
            break
        time.sleep(0.01)
    victims = rank_processes(launcher)
    assert launcher.poll() is None and victims, "the run must still be going when a rank is killed"
    os.kill(victims[-1].pid, signal.SIGKILL)
    killed_at = time.time()
    code = launcher.wait(timeout=120)
    assert code != 0, "a dead rank must fail the job"
    assert time.time() - killed_at < 60, "the job must end promptly, not hang"
    resumed_from = int(latest.read_text().strip().removeprefix("global_step"))
    assert 6 <= resumed_from < 16

    result = check(run(cmd, cut_dir))
    assert f"resumed from {cut_dir / 'ckpt' / f'global_step{resumed_from}'}" in result.stdout
    after = losses(cut_dir / "ckpt")
    for step in range(resumed_from + 1, 17):
        assert after[step] == reference[step], (step, after[step], reference[step])
