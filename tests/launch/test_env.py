"""The launch environment, read from what each launcher sets (the variables as the launchers write them)."""

from __future__ import annotations

import os

import pytest

from launch.env import LaunchEnv, LaunchError, expand_counts, expand_hostlist


def read(**env: str) -> LaunchEnv:
    return LaunchEnv.read(env, device_type="cpu")


def test_deepspeed_runner():
    e = read(
        RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_SIZE="2", MASTER_ADDR="10.0.0.1", MASTER_PORT="29600"
    )
    assert (e.rank, e.world, e.local_rank, e.local_world) == (3, 8, 1, 2)
    assert (e.master_addr, e.master_port, e.launcher) == ("10.0.0.1", 29600, "deepspeed")
    assert e.multi_node


def test_torchrun():
    e = read(
        RANK="1",
        WORLD_SIZE="2",
        LOCAL_RANK="1",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="h",
        MASTER_PORT="1234",
        TORCHELASTIC_RUN_ID="x",
    )
    assert (e.rank, e.local_world, e.launcher) == (1, 2, "torchrun")
    assert not e.multi_node


def test_open_mpi_with_master_exported():
    e = read(
        OMPI_COMM_WORLD_RANK="5",
        OMPI_COMM_WORLD_SIZE="8",
        OMPI_COMM_WORLD_LOCAL_RANK="1",
        OMPI_COMM_WORLD_LOCAL_SIZE="4",
        MASTER_ADDR="node1",
        MASTER_PORT="29700",
    )
    assert (e.rank, e.world, e.local_rank, e.local_world, e.master_addr, e.launcher) == (
        5,
        8,
        1,
        4,
        "node1",
        "openmpi",
    )


def test_mpich_pmi():
    e = read(
        PMI_RANK="2", PMI_SIZE="4", MPI_LOCALRANKID="0", MPI_LOCALNRANKS="2", MASTER_ADDR="a", MASTER_PORT="7"
    )
    assert (e.rank, e.world, e.local_rank, e.local_world, e.master_port) == (2, 4, 0, 2, 7)


SRUN_STEP = dict(
    SLURM_PROCID="5",
    SLURM_STEP_NUM_TASKS="8",
    SLURM_LOCALID="1",
    SLURM_NODEID="2",
    SLURM_STEP_NODELIST="gpu[07-08,10],cpu1",
    SLURM_STEP_TASKS_PER_NODE="2(x3),2",
    SLURM_JOB_NODELIST="gpu[07-08,10],cpu1",
    SLURM_NTASKS="8",
)


def test_slurm_srun_step():
    """srun, one task per rank: the step's variables; the master is the first node; the port is the one
    the batch script exported, else the step's reserved port, so every task computes the same one."""
    e = read(**SRUN_STEP, SLURM_JOB_ID="4242", MASTER_PORT="23456")
    assert (e.rank, e.world, e.local_rank, e.local_world) == (5, 8, 1, 2)
    assert (e.master_addr, e.master_port, e.launcher) == ("gpu07", 23456, "slurm")
    e = read(**SRUN_STEP, SLURM_JOB_ID="4242", SLURM_STEP_RESV_PORTS="12001-12002")
    assert e.master_port == 12001


def test_two_slurm_jobs_on_one_node_never_share_a_port():
    """Job ids 15000 apart once mapped to the same port. Now the port is SLURM's reservation for the step
    (distinct for concurrent steps on a node), and without one the tasks refuse to guess."""
    first = read(**SRUN_STEP, SLURM_JOB_ID="4242", SLURM_STEP_RESV_PORTS="12001")
    second = read(**SRUN_STEP, SLURM_JOB_ID=str(4242 + 15000), SLURM_STEP_RESV_PORTS="12002")
    assert first.master_port != second.master_port
    with pytest.raises(LaunchError, match=r"without MASTER_PORT and without reserved ports: export"):
        read(**SRUN_STEP, SLURM_JOB_ID="4242")


def test_the_batch_script_of_a_slurm_job_is_one_rank():
    """sbatch sets SLURM_PROCID in the batch script too, but no step: a plain `python pretrain_gpt.py`
    there is one rank, not rank 0 of SLURM_NTASKS."""
    e = read(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_NODELIST="n[1-4]", SLURM_JOB_ID="7")
    assert (e.rank, e.world, e.launcher) == (0, 1, "none")


def test_the_deepspeed_runner_inside_a_slurm_allocation_wins():
    e = read(
        RANK="1",
        WORLD_SIZE="2",
        LOCAL_RANK="0",
        LOCAL_SIZE="1",
        MASTER_ADDR="n1",
        MASTER_PORT="2",
        SLURM_PROCID="0",
        SLURM_STEP_NUM_TASKS="1",
        SLURM_LOCALID="0",
        SLURM_JOB_NODELIST="n1",
    )
    assert (e.rank, e.world, e.launcher) == (1, 2, "deepspeed")


def test_no_launcher_is_one_rank_on_a_free_port():
    e = read()
    assert (e.rank, e.world, e.local_world, e.master_addr, e.launcher) == (0, 1, 1, "127.0.0.1", "none")
    assert 0 < e.master_port < 65536


def test_errors_name_the_variable_and_the_fix():
    with pytest.raises(
        LaunchError, match=r"MASTER_ADDR and MASTER_PORT not: start the ranks with `deepspeed`"
    ):
        read(RANK="0", WORLD_SIZE="2")
    with pytest.raises(LaunchError, match=r"RANK='x' is not an integer"):
        read(RANK="x", WORLD_SIZE="2", MASTER_ADDR="a", MASTER_PORT="1")
    with pytest.raises(LaunchError, match=r"rank 4 is outside the world of 4"):
        read(RANK="4", WORLD_SIZE="4", MASTER_ADDR="a", MASTER_PORT="1")


def test_export_writes_what_torch_and_deepspeed_read():
    env: dict[str, str] = {}
    read(
        OMPI_COMM_WORLD_RANK="1",
        OMPI_COMM_WORLD_SIZE="2",
        OMPI_COMM_WORLD_LOCAL_RANK="0",
        OMPI_COMM_WORLD_LOCAL_SIZE="1",
        MASTER_ADDR="n0",
        MASTER_PORT="29500",
    ).export(env)
    assert env == {
        "RANK": "1",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "29500",
    }


def test_slurm_host_lists():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("node7") == ["node7"]
    assert expand_hostlist("a[9-11]-ib,b") == ["a9-ib", "a10-ib", "a11-ib", "b"]
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(LaunchError, match="cannot read the SLURM task counts"):
        expand_counts("two")


def test_ranks_under_mpirun_agree_on_a_free_port_without_master_port(tmp_path):
    """mpirun without MASTER_PORT: rank 0 probes a free port on its host and mpi4py gives it to every rank
    (the fixed 29500 would collide with any other job on the host). Each rank writes its own file:
    mpirun interleaves the ranks' stdout at arbitrary points."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed (scripts/install_system_deps.sh installs Open MPI)")
    probe = "import pathlib, sys; from launch.env import LaunchEnv; e = LaunchEnv.read(device_type='cpu')\n"
    probe += "pathlib.Path(sys.argv[1], str(e.rank)).write_text(str(e.master_port))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "OMPI_", "PMI"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    cmd = ["mpirun", "-n", "2", "--oversubscribe", "--allow-run-as-root", sys.executable, "-c", probe]
    out = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ports = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert sorted(ports) == ["0", "1"] and ports["0"] == ports["1"] != "29500", ports
