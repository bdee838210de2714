"""The shell pieces of launch/slurm that run without a cluster (the scripts themselves run on a real SLURM
cluster in tests/cluster/test_slurm.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The batch scripts' shape: the launch command in the background, a USR1 trap that asks it to stop (here
# the command exits with CODE while the trap is still running), and wait_launcher.
SCRIPT = """
source launch/slurm/wait_launcher.sh
(trap 'exit {code}' USR1; while :; do sleep 0.05; done) &
launcher=$!
requeue=0
trap 'requeue=1; kill -USR1 $launcher; sleep 0.5' USR1
(sleep 0.3; kill -USR1 $$) &
wait_launcher "$launcher"
echo "rc=$rc requeue=$requeue"
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_launcher_that_exits_during_the_trap_is_reported_as_it_ended(code):
    """`wait` interrupted by the trap returns 138; the launcher's own status must decide the requeue (0:
    saved, requeue) and the job's exit status (3 stays 3)."""
    out = subprocess.run(
        ["bash", "-c", SCRIPT.format(code=code)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == f"rc={code} requeue=1", out.stderr


def test_a_launcher_that_ends_on_its_own_keeps_its_status():
    script = "source launch/slurm/wait_launcher.sh\n(exit 5) &\nwait_launcher $!\necho rc=$rc\n"
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "rc=5", out.stderr
