"""Simulated clusters on one machine, for launch tests across hosts and under SLURM.

    hosts   two hosts (network namespaces on a private subnet, each with its hostname, /etc/hosts and sshd)
            reachable by the `ssh` wrapper in hosts.bin_dir, so pdsh, the DeepSpeed runner and mpirun work
    slurm   a SLURM cluster on those hosts: slurmctld on the first, a slurmd on each

Both are session-scoped and torn down at the end, also after failures. They need root and the Debian
packages of scripts/install_system_deps.sh; without them the tests skip and say why. Every test in this
directory is marked `cluster` (`pytest -m "not cluster"` leaves them out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.cluster import hosts as hosts_module
from tests.cluster import slurm as slurm_module
from tests.cluster.hosts import Hosts, start_hosts
from tests.cluster.slurm import Slurm, start_slurm
from tests.training.conftest import tiny_data  # noqa: F401  (the training tests' shards, for runs here)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.cluster)


def require(binaries: Sequence[str]) -> None:
    """Skip (with the reason) unless this runs as root with every binary on PATH."""
    if os.geteuid() != 0:
        pytest.skip("simulated clusters need root (network namespaces, sshd, slurmd)")
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)} (install with scripts/install_system_deps.sh)")
    # root without CAP_SYS_ADMIN (an unprivileged container) cannot make namespaces
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create namespaces here: {probe.stderr.strip()}")


@pytest.fixture(scope="session")
def hosts() -> Iterator[Hosts]:
    require(hosts_module.BINARIES)
    with start_hosts() as running:
        yield running


@pytest.fixture(scope="session")
def slurm(hosts: Hosts) -> Iterator[Slurm]:
    require(slurm_module.BINARIES)
    with start_slurm(hosts) as running:
        yield running
