"""A process of "another job" on the same host: its command line is that of DeepSpeed's per-node launcher with
a given master port, and its child looks like a rank of pretrain_gpt.py. Only our own ranks may ever be
signalled; a decoy must survive every stop and kill of ours."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from data_tools.processes import alive

LAUNCH = """\
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-u", "-c", "import time; time.sleep(900)", "pretrain_gpt.py",
                         "--local_rank=0"])
print(rank.pid, flush=True)
rank.wait()
"""


@contextlib.contextmanager
def decoy(tmp_path: Path, master_port: int, env: dict[str, str] | None = None) -> Iterator[tuple[int, int]]:
    """(launcher pid, rank pid) of a decoy launch on `master_port`, killed on exit. `env` is added to its
    environment (e.g. a CODEPARROT_LAUNCH_ID of its own)."""
    pkg = tmp_path / f"decoy{master_port}" / "deepspeed" / "launcher"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "launch.py").write_text(LAUNCH)
    argv = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30=", "--node_rank=0"]
    argv += ["--master_addr=127.0.0.1", f"--master_port={master_port}", "pretrain_gpt.py"]
    environ = {**os.environ, "PYTHONPATH": str(pkg.parents[1]), **(env or {})}
    proc = subprocess.Popen(argv, env=environ, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        rank = int(proc.stdout.readline())
        yield proc.pid, rank
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while alive(pid):
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True
