"""A checkpoint marked complete holds exactly the files of one save: a crash while saving into a tag that
already exists never leaves it chosen, and bytes changed after the save (at the same size) are found."""

from __future__ import annotations

import json

import pytest

from .conftest import FAULT_WORKER, check, deepspeed_cmd, losses, run, run_config
from .test_integrity import errors_once

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


def test_bytes_flipped_in_an_optimizer_shard_are_found_before_resuming(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=4, save_interval=2, eval_interval=0)
    check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    tag = tmp_path / "ckpt" / "global_step4"
    shard = tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    raw = bytearray(shard.read_bytes())
    for i in range(len(raw) - 4096, len(raw) - 4000):  # inside the tensors' bytes: torch.load still works
        raw[i] ^= 0xFF
    shard.write_bytes(bytes(raw))

    cfg6 = run_config(tmp_path, tiny_data, max_steps=6, save_interval=2, eval_interval=0)
    out = errors_once(run(deepspeed_cmd(cfg6, "zero2_cpu.json"), tmp_path))
    record = json.loads((tag / "files.json").read_text())
    assert all(len(entry["crc32"]) == 8 for entry in record.values())  # every rank's files summed
    assert f"checkpoint {tag} is damaged: {shard} (CRC-32 " in out
    assert f"{record[shard.name]['crc32']} when saved: its bytes changed at the same size)" in out
    assert "`--resume-from global_step2`" in out
    result = check(run(deepspeed_cmd(cfg6, "zero2_cpu.json", "--resume-from", "global_step2"), tmp_path))
    assert "step 6/6" in result.stdout
