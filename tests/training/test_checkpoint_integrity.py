"""A checkpoint marked complete holds exactly the files of one save: a crash while saving into a tag that
already exists never leaves it chosen."""

from __future__ import annotations

import pytest

from .conftest import FAULT_WORKER, check, deepspeed_cmd, losses, run, run_config

pytestmark = pytest.mark.slow


def test_a_crash_while_saving_over_an_existing_tag_is_never_resumed_from(tiny_data, tmp_path):
    """Steps 1-8 saved at 4 and 8; then a run resumed with --resume-from global_step4 saves into the
    existing global_step8, and rank 1 is SIGKILLed in the middle of that save. The next start resumes from
    global_step4 (complete) and trains steps 5-8 as the first run did."""
    cfg = run_config(tmp_path, tiny_data, max_steps=8, save_interval=4, eval_interval=0, keep_last=0)
    check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    ckpt = tmp_path / "ckpt"
    reference = losses(ckpt)
    assert (ckpt / "latest").read_text().strip() == "global_step8"

    cut = run(
        deepspeed_cmd(cfg, "zero2_cpu.json", "--resume-from", "global_step4", script=FAULT_WORKER),
        tmp_path,
        timeout=240,
        faults={"sigkill_in_save": [1, 8]},
    )
    assert cut.returncode != 0, "a dead rank must fail the job"
    assert f"resumed from {ckpt / 'global_step4'} at step 4" in cut.stdout
    assert not (ckpt / "global_step8" / "COMPLETE").exists()
    assert (ckpt / "latest").read_text().strip() == "global_step4"

    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {ckpt / 'global_step4'} at step 4" in result.stdout
    after = losses(ckpt)
    assert [after[s] for s in range(5, 9)] == [reference[s] for s in range(5, 9)]
    assert (ckpt / "global_step8" / "COMPLETE").exists()
