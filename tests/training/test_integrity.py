"""Faults around a training run, each built for real: a second run on one save_dir, stale locks, damaged
checkpoints, a resume on another data-parallel size, a full disk, datasets of different tokenizers, an
unusable save_dir. Each checks what the user sees and that nothing good was lost."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from training.run_lock import LOCK, STALE_AFTER_S, stale_reason

from .conftest import ROOT, check, deepspeed_cmd, env, losses, run, run_config, single_cmd

pytestmark = pytest.mark.slow


def errors_once(result: subprocess.CompletedProcess) -> str:
    """The error paragraph, asserting it reached the user exactly once, with exit status 2, no traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert out.count("error: invalid run configuration") == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return out


# ---- one run per save_dir ------------------------------------------------------------------------------


def test_a_second_run_on_the_same_save_dir_is_refused_before_writing(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, save_interval=100000, eval_interval=0)
    first = subprocess.Popen(
        single_cmd(cfg, "zero2_cpu.json"),
        cwd=ROOT,
        env=env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        metrics = tmp_path / "ckpt" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.05)
        written = {p: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").glob("*.json")}
        second = run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path)
        out = errors_once(second)
        assert (
            f"train.save_dir {tmp_path / 'ckpt'} is in use by another run: host {socket.gethostname()}, "
            f"pid {first.pid}, started " in out
        )
        assert {p: p.stat().st_mtime_ns for p in written} == written  # run_config.json etc. untouched
        assert first.poll() is None  # the first run goes on
    finally:
        first.terminate()  # SIGTERM: it saves and exits 0, releasing the lock
        assert first.wait(timeout=120) == 0
    assert not (tmp_path / "ckpt" / LOCK).exists()


def test_stale_locks_are_taken_over(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    lock = ckpt / LOCK  # left by a run on this host whose process is gone (a pid above any pid_max)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 17, "started": "earlier"}))
    cfg = run_config(tmp_path, tiny_data, max_steps=2, eval_interval=0)
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert "taking over the run lock" in result.stdout and f"process {2**22 + 17}" in result.stdout
    assert not lock.exists()

    # Another host's lock: refused while its heartbeat is fresh, taken over once it is stale.
    lock.write_text(json.dumps({"host": "node-that-died", "pid": 1, "started": "earlier"}))
    cfg = run_config(tmp_path, tiny_data, max_steps=3, eval_interval=0)
    assert "host node-that-died, pid 1" in errors_once(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    old = time.time() - STALE_AFTER_S - 10
    os.utime(lock, (old, old))
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert "no heartbeat from node-that-died" in result.stdout and "step 3/3" in result.stdout


def test_stale_rule():
    me = socket.gethostname()
    assert stale_reason({"host": me, "pid": os.getpid()}, 0.0, me) is None
    assert "is gone" in stale_reason({"host": me, "pid": 2**22 + 17}, 0.0, me)
    # The pid is alive but belongs to a process started at another time (pid reuse): stale.
    assert "is gone" in stale_reason({"host": me, "pid": os.getpid(), "proc_start": "1"}, 0.0, me)
    assert stale_reason({"host": "other", "pid": 1}, STALE_AFTER_S - 1, me) is None
    assert stale_reason({"host": "other", "pid": 1}, STALE_AFTER_S + 1, me)


# ---- damaged checkpoints -------------------------------------------------------------------------------


def test_damaged_checkpoints_name_the_file_and_offer_complete_tags(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=4, save_interval=2, eval_interval=0)
    check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    ckpt = tmp_path / "ckpt"
    reference = losses(ckpt)
    states = ckpt / "global_step4" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])  # a truncated copy
    cfg6 = run_config(tmp_path, tiny_data, max_steps=6, save_interval=2, eval_interval=0)
    out = errors_once(run(single_cmd(cfg6, "zero2_cpu.json"), tmp_path))
    assert f"checkpoint {ckpt / 'global_step4'} is damaged: {states} (" in out
    assert "Complete checkpoints in" in out and "--resume-from global_step2" in out

    # `latest` naming a tag that is gone: the complete ones are listed.
    shutil.rmtree(ckpt / "global_step4")
    out = errors_once(run(single_cmd(cfg6, "zero2_cpu.json"), tmp_path))
    assert f"{ckpt / 'latest'} names global_step4, but {ckpt / 'global_step4'} does not exist" in out
    assert "global_step2" in out

    # --resume-from an earlier complete tag continues exactly as the first run did.
    result = check(run(single_cmd(cfg6, "zero2_cpu.json", "--resume-from", "global_step2"), tmp_path))
    assert f"resumed from {ckpt / 'global_step2'} at step 2" in result.stdout
    after = losses(ckpt)
    assert after[3] == reference[3] and after[4] == reference[4] and 6 in after


# ---- another data-parallel size (resumes that work: test_resize.py) ------------------------------------


def test_another_data_parallel_size_is_refused_where_unsupported(tiny_data, tmp_path):
    """ZeRO stage 0 has no partitioned optimizer state for DeepSpeed's universal checkpoint to regroup."""
    ds = tmp_path / "zero0.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "steps_per_print": 1000000}))
    cfg = run_config(tmp_path, tiny_data, max_steps=2, global_batch=4, eval_interval=0)
    check(run(single_cmd(cfg, str(ds)), tmp_path))
    out = errors_once(run(deepspeed_cmd(cfg, str(ds)), tmp_path))
    assert "was saved with data-parallel size 1, this run has 2" in out
    assert "supported here for ZeRO stage 1, 2 and 3 without pipeline stages (this run: ZeRO 0" in out
    assert "Resume with 1 data-parallel ranks" in out


# ---- a full disk ---------------------------------------------------------------------------------------


def test_disk_full_says_what_is_safe_and_resumes(tiny_data, tmp_path, tmpfs):
    small_disk = tmpfs("4m")  # room for the run's first checkpoint (about 2.4 MiB), not its second
    cfg = run_config(tmp_path, tiny_data, max_steps=4, save_interval=2, eval_interval=0, keep_last=0)
    data = json.loads(cfg.read_text())
    data["train"]["save_dir"] = str(small_disk / "ckpt")
    cfg.write_text(json.dumps(data))
    result = run(single_cmd(cfg, "zero2_cpu.json"), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert f"no space left on the device of train.save_dir {small_disk / 'ckpt'}" in out
    assert f"the last complete checkpoint {small_disk / 'ckpt' / 'global_step2'} (step 2) is intact" in out
    assert "Traceback" not in out
    assert (small_disk / "ckpt" / "latest").read_text().strip() == "global_step2"
    assert not (small_disk / "ckpt" / "global_step4").exists()  # the half-written save gave its space back
    # With room again (the files moved to a larger disk), the same run resumes from step 2.
    shutil.copytree(small_disk / "ckpt", tmp_path / "ckpt")
    data["train"]["save_dir"] = str(tmp_path / "ckpt")
    cfg.write_text(json.dumps(data))
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {tmp_path / 'ckpt' / 'global_step2'} at step 2" in result.stdout


# ---- data and save_dir problems, before any engine -----------------------------------------------------


def test_datasets_of_different_tokenizers_are_not_blended(tiny_data, tmp_path):
    from data_tools.preprocess import PreprocessConfig, preprocess
    from data_tools.sources import SourceConfig

    other = tmp_path / "other"
    preprocess(
        PreprocessConfig(
            sources=SourceConfig(inputs=(str(tiny_data.parent / "corpus.jsonl"),)),
            output=other,
            vocab_size=500,
            show_progress=False,
        )
    )
    cfg = run_config(tmp_path, tiny_data, max_steps=2)
    data = json.loads(cfg.read_text())
    data["data"]["paths"] = [str(tiny_data), str(other)]
    cfg.write_text(json.dumps(data))
    out = errors_once(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert "data.paths were tokenized with different tokenizers" in out
    assert f"{tiny_data} (tokenizer " in out and "600 ids" in out and f"{other} (tokenizer " in out


def test_unusable_save_dir_is_one_error_from_rank_0(tiny_data, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    cfg = run_config(tmp_path, tiny_data, max_steps=2, save_dir=str(tmp_path / "a_file" / "ckpt"))
    out = errors_once(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"train.save_dir {tmp_path / 'a_file' / 'ckpt'} cannot be used: Not a directory" in out
    assert "[rank 1]" not in out


def test_corrupt_shard_is_found_before_training(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shard = data / "train_00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit
    shard.write_bytes(bytes(raw))
    cfg = run_config(tmp_path, data, max_steps=2)
    out = errors_once(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert str(shard) in out and "sha256" in out
    assert not (tmp_path / "ckpt" / "metrics.jsonl").exists()  # no step was trained on it
    result = check(run(single_cmd(cfg, "zero2_cpu.json", "--no-verify-data"), tmp_path))
    assert "step 2/2" in result.stdout
