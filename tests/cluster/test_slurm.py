"""The SLURM submission scripts of launch/slurm on a real SLURM cluster (slurmctld and two slurmd, each
node a network-namespace host, see conftest.py): both training paths run to completion with the same
losses, and a job signalled before its time limit saves, requeues itself and resumes to the same end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.training.conftest import ROOT, check, deepspeed_cmd, losses, run, run_config

pytestmark = pytest.mark.cluster

STEPS = 24
SRUN = ROOT / "launch" / "slurm" / "train_srun.sbatch"
HOSTFILE = ROOT / "launch" / "slurm" / "train_hostfile.sbatch"


def submit(slurm, hosts, tmp_path: Path, script: Path, cfg: Path, ds: str, **env: str) -> int:
    return slurm.sbatch(
        "--nodes=2",
        "--ntasks-per-node=1",
        f"--output={tmp_path}/job-%j.out",
        str(script),
        "--config",
        str(cfg),
        "--ds_config",
        str(ROOT / "ds_configs" / ds),
        cwd=ROOT,
        env=hosts.env(
            PYTHON=str(ROOT / ".venv" / "bin" / "python"),
            TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_ext"),
            **env,
        ),
    )


def wait_for_steps(slurm, job: int, tmp_path: Path, n: int) -> None:
    """Until the job's run has logged n steps."""
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert time.time() < deadline, slurm.state(job)
        time.sleep(0.2)


def stopped_at(out: str) -> int:
    """The step at which the first run of the job saved and stopped ("saved at step N, exiting")."""
    saved = [line for line in out.splitlines() if "saved at step" in line and "exiting" in line]
    assert saved, out[-4000:]
    return int(saved[0].split("saved at step ")[1].split(",")[0])


def job_log(tmp_path: Path, job: int) -> str:
    return (tmp_path / f"job-{job}.out").read_text()


@pytest.fixture(scope="module")
def srun_run(slurm, hosts, tiny_data, tmp_path_factory) -> tuple[Path, int]:
    """Path (b): srun, one task per rank, ranks from SLURM's variables; run once, checked below."""
    tmp = tmp_path_factory.mktemp("srun")
    cfg = run_config(tmp, tiny_data, max_steps=STEPS, eval_interval=0, save_interval=10)
    job = submit(slurm, hosts, tmp, SRUN, cfg, "zero2_cpu.json")
    state = slurm.wait(job, timeout=300)
    assert state == "COMPLETED", job_log(tmp, job)[-4000:]
    return tmp, job


def test_srun_path_runs_to_completion(slurm, srun_run):
    tmp, job = srun_run
    out = job_log(tmp, job)
    assert "2 tasks" in out, out[-4000:]
    assert f"launch: rank 0/2 (local 0/1) via slurm, master {slurm.nodes[0]}:" in out, out[-4000:]
    port = int(out.split(f"via slurm, master {slurm.nodes[0]}:")[1].split(",")[0])
    assert 20100 <= port <= 20199, "the master port is the step's reserved port (MpiParams=ports=...)"
    assert sorted(losses(tmp / "ckpt")) == list(range(1, STEPS + 1))
    assert (tmp / "ckpt" / "latest").read_text().strip() == f"global_step{STEPS}"


def test_hostfile_path_equals_the_srun_path(slurm, hosts, tiny_data, tmp_path, srun_run):
    """Path (a): a hostfile from the allocation and the DeepSpeed runner over pdsh; the same losses."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, eval_interval=0, save_interval=10)
    job = submit(slurm, hosts, tmp_path, HOSTFILE, cfg, "zero2_cpu.json", RANKS_PER_NODE="1")
    state = slurm.wait(job, timeout=300)
    out = job_log(tmp_path, job)
    assert state == "COMPLETED", out[-4000:]
    assert f"on {' '.join(f'{n} slots=1' for n in slurm.nodes)}" in out
    assert "launch: rank 0/2 (local 0/1) via deepspeed" in out
    assert losses(tmp_path / "ckpt") == losses(srun_run[0] / "ckpt")


def test_signalled_job_saves_requeues_and_resumes_to_the_same_end(
    slurm, hosts, tiny_data, tmp_path, srun_run
):
    """USR1 to the batch script (what --signal=B:USR1@300 sends before the time limit): the ranks save
    and exit 0, the job requeues itself, and the second run resumes from that checkpoint and ends with
    the losses of the uninterrupted job."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, eval_interval=0, save_interval=10)
    job = submit(slurm, hosts, tmp_path, SRUN, cfg, "zero2_cpu.json")
    wait_for_steps(slurm, job, tmp_path, 3)
    slurm.scancel("--batch", "--signal=USR1", str(job))
    state = slurm.wait(job, timeout=400)
    out = job_log(tmp_path, job)
    assert state == "COMPLETED", out[-4000:]
    assert "requeueing job" in out and "(restart 1)" in out, out[-4000:]
    step = stopped_at(out)
    assert 3 <= step < STEPS
    assert f"at step {step}" in out.split("(restart 1)")[1]  # the second run resumed from that save
    assert losses(tmp_path / "ckpt") == losses(srun_run[0] / "ckpt")


def test_preempted_job_saves_on_sigterm_and_resumes_to_the_same_end(
    slurm, hosts, tiny_data, tmp_path, srun_run
):
    """`scontrol requeue` of a running job is what preemption with PreemptMode=REQUEUE does: SLURM sends
    SIGTERM to every process of the job, waits KillWait, kills, and queues the job again. Under srun every
    rank saves on SIGTERM; the requeued job resumes from that save and ends as the uninterrupted one."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, eval_interval=0, save_interval=10)
    job = submit(slurm, hosts, tmp_path, SRUN, cfg, "zero2_cpu.json")
    wait_for_steps(slurm, job, tmp_path, 3)
    slurm.scontrol("requeue", str(job))
    state = slurm.wait(job, timeout=400)
    out = job_log(tmp_path, job)
    assert state == "COMPLETED", out[-4000:]
    assert "stop requested (signal 15)" in out, out[-4000:]
    step = stopped_at(out)
    assert 3 <= step < STEPS
    assert f"at step {step}" in out.split("(restart 1)")[1]
    assert losses(tmp_path / "ckpt") == losses(srun_run[0] / "ckpt")


def wait_in_log(tmp_path: Path, job: int, text: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while True:
        path = tmp_path / f"job-{job}.out"
        out = path.read_text() if path.exists() else ""
        if text in out:
            return out
        assert time.time() < deadline, f"{text!r} not in the job log:\n{out[-4000:]}"
        time.sleep(0.5)


def test_scancel_of_a_hostfile_job_saves(slurm, hosts, tiny_data, tmp_path):
    """Path (a) under `scancel`: SLURM sends SIGTERM to every process of the job (codeparrot-launch, the
    DeepSpeed runner, pdsh) and the batch script's trap forwards another to codeparrot-launch. One stop:
    every rank saves, and the job ends only after the save is complete. (The ranks' own output is lost
    with pdsh, which SLURM also terminates; the checkpoint is what counts.)"""
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, eval_interval=0, save_interval=100000)
    job = submit(slurm, hosts, tmp_path, HOSTFILE, cfg, "zero2_cpu.json", RANKS_PER_NODE="1")
    wait_for_steps(slurm, job, tmp_path, 3)
    slurm.scancel(str(job))
    assert slurm.wait(job, timeout=120) == "CANCELLED"
    latest = tmp_path / "ckpt" / "latest"
    out = job_log(tmp_path, job)
    assert latest.exists(), out[-4000:]  # at the moment the job ended
    tag = latest.read_text().strip()
    assert (tmp_path / "ckpt" / tag / "COMPLETE").exists()
    assert int(tag.removeprefix("global_step")) >= 3
    # SLURM's SIGTERM and the trap's arrive microseconds apart; the kernel merges a standard signal that is
    # still pending, so the launcher sees either both (the second logged as a duplicate) or one.
    # tests/training/test_signals.py sends the two apart and always checks the duplicate line.
    assert out.count("SIGTERM: every rank finishes its step, saves a checkpoint") == 1, out[-4000:]
    assert "stopping every rank now" not in out, out[-4000:]


def test_preempted_hostfile_job_saves_and_resumes_to_the_same_end(slurm, hosts, tiny_data, tmp_path):
    """Path (a) preempted (`scontrol requeue`: SIGTERM to every process, then requeued by SLURM): saves,
    resumes from the save and ends with the losses of an uninterrupted run (2 ranks on one host: the
    multi-host tests show both give the same losses). Long enough (400 steps, about 15 s) for the
    preemption to land mid-run."""
    steps = 400
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_cfg = run_config(reference, tiny_data, max_steps=steps, eval_interval=0, save_interval=100000)
    check(run(deepspeed_cmd(ref_cfg, "zero2_cpu.json"), reference))
    cfg = run_config(tmp_path, tiny_data, max_steps=steps, eval_interval=0, save_interval=100000)
    job = submit(slurm, hosts, tmp_path, HOSTFILE, cfg, "zero2_cpu.json", RANKS_PER_NODE="1")
    wait_for_steps(slurm, job, tmp_path, 3)
    slurm.scontrol("requeue", str(job))
    state = slurm.wait(job, timeout=400)
    out = job_log(tmp_path, job)
    assert state == "COMPLETED", out[-4000:]
    resumed = out.split("(restart 1)")[1]
    step = int(resumed.split("global_step")[1].split(" ")[0])
    assert 3 <= step < steps, "the preemption stopped the run early, with a save"
    assert f"at step {step}" in resumed
    assert losses(tmp_path / "ckpt") == losses(reference / "ckpt")


@pytest.mark.parametrize("script", [SRUN, HOSTFILE], ids=["srun path", "hostfile path"])
def test_time_limit_signal_saves_requeues_and_resumes(slurm, hosts, tiny_data, tmp_path, script):
    """A real time limit: --time=2 with --signal=B:USR1@30, so SLURM signals the batch script 30-90 s into
    the job (sbatch(1): the signal may come up to 60 s early). The ranks save, the job requeues itself and
    the next run resumes from that save; the test then cancels it."""
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, eval_interval=0, save_interval=100000)
    job = slurm.sbatch(
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=2",
        "--signal=B:USR1@30",
        f"--output={tmp_path}/job-%j.out",
        str(script),
        "--config",
        str(cfg),
        "--ds_config",
        str(ROOT / "ds_configs" / "zero2_cpu.json"),
        cwd=ROOT,
        env=hosts.env(
            PYTHON=str(ROOT / ".venv" / "bin" / "python"),
            TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_ext"),
            RANKS_PER_NODE="1",
        ),
    )
    try:
        out = wait_in_log(tmp_path, job, "(restart 1)", timeout=300)
        step = stopped_at(out)
        assert "requeueing job" in out
        resumed = f"resumed from {tmp_path / 'ckpt' / f'global_step{step}'} at step {step}"
        out = wait_in_log(tmp_path, job, resumed, timeout=120)
        assert resumed in out.split("(restart 1)")[1]
    finally:
        slurm.scancel(str(job))
        slurm.wait(job, timeout=120)
