"""The master port: one rule for every way a run is started.

    MASTER_PORT set               that port, everywhere (the user chose it)
    srun --resv-ports             the first of the ports SLURM reserved for the step (SLURM_STEP_RESV_PORTS):
                                    the controller hands distinct ports to concurrent steps on a node
    otherwise                     a port nothing listens on, probed on the host where rank 0 listens: here,
                                    or on the first host of a hostfile over ssh (`choose_master_port`)

codeparrot-launch, launch/multi_node.sh, launch/slurm/train_srun.sbatch and codeparrot-preflight all take the
port from `choose_master_port` (`python -m launch.ports [--hostfile H]` prints it), so the port preflight
checks is the port the ranks use. DeepSpeed's fixed default, 29500, is never assumed: two jobs sharing a host
would both take it. A probed port is free when probed; the process group binds it a few seconds later, and a
job that loses that race fails at start with "address already in use" instead of joining another job.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


class PortError(RuntimeError):
    """No master port could be chosen; the message says why and what to pass instead."""


def free_port() -> int:
    """A TCP port nothing on this host listens on now (the kernel's choice among the ephemeral ports)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def reserved_port(environ: Mapping[str, str]) -> int | None:
    """The first port SLURM reserved for this step (`srun --resv-ports`; SLURM_STEP_RESV_PORTS is "12000" or
    "12000-12003" or "12000,12005"), else None."""
    spec = environ.get("SLURM_STEP_RESV_PORTS", "").strip()
    if not spec:
        return None
    first = spec.split(",")[0].split("-")[0]
    if not first.isdigit():
        raise PortError(f"SLURM_STEP_RESV_PORTS={spec!r} is not a port range; unset it or set MASTER_PORT")
    return int(first)


def choose_master_port(
    host: str | None = None, ssh_port: int | None = None, python: str | None = None
) -> int:
    """A port nothing listens on, on `host` over ssh (the first host of a multi-node launch, where rank 0
    listens) or, for None, here. `python` is the interpreter run there (default: this one, which the
    DeepSpeed runner also starts on every host)."""
    if host is None:
        return free_port()
    probe = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
    ssh = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        *(["-p", str(ssh_port)] if ssh_port else []),
    ]
    remote = f"{shlex.quote(python or sys.executable)} -c {shlex.quote(probe)}"
    try:
        out = subprocess.run([*ssh, host, remote], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise PortError(
            f"ssh {host} did not answer within 60 s; check the host, or pass --master_port"
        ) from None
    if out.returncode != 0 or not out.stdout.split():
        raise PortError(
            f"cannot reach {host} over ssh to choose a master port ({out.stderr.strip() or 'no output'}); "
            f"check that `ssh {host} hostname` works without a password, or pass --master_port"
        )
    return int(out.stdout.split()[-1])


def first_host(hostfile: Path) -> str | None:
    """The first host of a DeepSpeed hostfile, or None when it lists only this machine (localhost)."""
    from launch.hostfile import read_hostfile

    hosts = read_hostfile(hostfile).hosts
    return None if not hosts or hosts[0] in ("localhost", "127.0.0.1") else hosts[0]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m launch.ports",
        description="Print the master port a launch should use (see launch/ports.py for the rule).",
        epilog="example: MASTER_PORT=$(python -m launch.ports --hostfile hosts)",
    )
    p.add_argument("--hostfile", type=Path, help="probe the first host of this hostfile over ssh")
    p.add_argument("--ssh-port", type=int)
    a = p.parse_args(argv)
    try:
        host = first_host(a.hostfile) if a.hostfile else None
        print(choose_master_port(host, a.ssh_port))
    except (PortError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
