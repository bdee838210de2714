"""The stage processes of bench/gpu/gpu_bench.py: their environment, start, timeout and end."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
LAUNCHER_PREFIXES = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "SLURM_", "MPI_LOCAL")


def worker_env(smoke: bool) -> dict[str, str]:
    """The environment of every stage process: the checkout importable (after run.sh's wheel directory),
    no launcher variables (each training case is its own world of one), a private extension cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARS and not k.startswith(LAUNCHER_PREFIXES) and k != "MASTER_PORT"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "codeparrot_gpu_ext"))
    env["PYTHONUNBUFFERED"] = "1"
    # DeepSpeed refuses to JIT-build an op when nvcc's CUDA version differs from torch's in the minor
    # number; the build is what the fused-adam stage tests, so let it try and record what happens.
    env.setdefault("DS_SKIP_CUDA_CHECK", "1")
    if smoke:
        env["OMP_NUM_THREADS"] = "1"
    return env


class Processes:
    """The stage processes running now, each in its own session, so that a timeout or a signal to the
    driver ends their whole trees."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, cmd: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        """Start ``cmd`` with its output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                list(cmd), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, log: Path, timeout: float, started: float) -> dict[str, Any]:
        """Wait for ``proc`` up to ``timeout`` s, killing its process group after; rc, time, output tail."""
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            proc.wait()
        self.running.remove(proc)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        seconds = time.time() - started
        return {
            "rc": proc.returncode,
            "timed_out": timed_out,
            "seconds": seconds,
            "log": log.name,
            "tail": tail,
        }

    def run(self, cmd: Sequence[str], log: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
        started = time.time()
        return self.finish(self.start(cmd, log, env), log, timeout, started)

    def kill_all(self) -> None:
        for proc in list(self.running):
            kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def status_of(proc: dict[str, Any], result: dict[str, Any] | None = None) -> str:
    if proc["timed_out"]:
        return "timeout"
    if result is not None and "status" in result:
        return result["status"]
    return "ok" if proc["rc"] == 0 else "failed"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
