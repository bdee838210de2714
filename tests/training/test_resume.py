"""Kill a rank with SIGKILL mid-run, resume: every later loss equals the uninterrupted run's, bit for bit
(with fill-in-the-middle on, as by default)."""

from __future__ import annotations

import json
import subprocess
import time

import psutil
import pytest

from .conftest import FAULT_WORKER, check, deepspeed_cmd, losses, run, run_config

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

    # Rank 1 dies by SIGKILL as step 7 starts, right after the step-6 checkpoint.
    config = config_with_dropout(cut_dir, tiny_data, **train)
    cut = run(
        deepspeed_cmd(config, ds_config, script=FAULT_WORKER),
        cut_dir,
        timeout=240,
        faults={"sigkill_at_step": [1, 7]},
    )
    ended = time.time()
    assert cut.returncode != 0, "a dead rank must fail the job"
    killed_at = float((cut_dir / "ckpt" / "sigkilled_at").read_text())
    assert ended - killed_at < 60, "the job must end promptly, not hang"
    latest = cut_dir / "ckpt" / "latest"
    assert latest.read_text().strip() == "global_step6"

    result = check(run(deepspeed_cmd(config, ds_config), cut_dir))
    assert f"resumed from {cut_dir / 'ckpt' / 'global_step6'}" in result.stdout
    # The default data.fim_rate 0.5 is on: the samples resumed are fill-in-the-middle ones.
    assert "fill-in-the-middle: 50% of training documents, 50% of those SPM" in result.stdout
    after = losses(cut_dir / "ckpt")
    for step in range(7, 17):
        assert after[step] == reference[step], (step, after[step], reference[step])
