"""codeparrot-launch's pieces that need no launcher: the remote ranks' environment file and which
processes are ranks. (Signals through the real runner: tests/training/test_signals.py, tests/cluster.)"""

from __future__ import annotations

from launch.run import _is_launcher, write_env_file


def test_env_file_keeps_the_users_lines_and_adds_what_remote_ranks_need(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.env").write_text("NCCL_IB_HCA=mlx5_0\n\nOMP_NUM_THREADS=4\n")
    env = {
        "DS_ENV_FILE": str(tmp_path / "mine.env"),  # an absolute path, as DeepSpeed's runner allows
        "PATH": "/venv/bin:/usr/bin",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "ib0",
        "HOME": "/root",
        "MULTI": "a\nb",
    }
    out = tmp_path / "out"
    out.mkdir()
    lines = write_env_file(env, out).read_text().splitlines()
    assert lines == [
        "NCCL_IB_HCA=mlx5_0",
        "OMP_NUM_THREADS=4",  # the user's own value wins
        "PATH=/venv/bin:/usr/bin",
        "GLOO_SOCKET_IFNAME=ib0",
    ]  # no blank line (DeepSpeed's runner fails on one), nothing it forwards itself, no HOME


def test_only_deepspeeds_per_node_launcher_counts_as_the_parent_of_ranks():
    launch = [
        "/venv/bin/python3",
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        "--node_rank=1",
        "--master_port=5",
    ]
    assert _is_launcher(launch)
    # pdsh and ssh carry the same words in their argument lists; the ranks themselves do not match
    assert not _is_launcher(["/usr/bin/ssh", "-x", "node2", "cd", "/w;", *launch])
    assert not _is_launcher(["pdsh", "-S", "-w", "a,b", *launch])
    assert not _is_launcher(["/venv/bin/python3", "-u", "pretrain_gpt.py", "--local_rank=0"])
