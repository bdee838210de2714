"""The preprocessing job as a SLURM array job on a real SLURM cluster: launch/slurm/preprocess.sh submits
scan (array) -> keep -> encode (array) -> merge, chained by afterok dependencies, and the merged dataset
equals the single-process job's (documents, token streams, tokenizer, manifest totals and report)."""

from __future__ import annotations

import pytest

from tests.data_tools.test_array_job import TASKS, assert_same_dataset, corpus, reference  # noqa: F401
from tests.training.conftest import ROOT

pytestmark = pytest.mark.cluster

DRIVER = ROOT / "launch" / "slurm" / "preprocess.sh"


def driver(slurm, tmp_path, corpus, *sbatch: str):  # noqa: F811
    cmd = ["bash", str(DRIVER), "--tasks", str(TASKS), "--work", str(tmp_path / "work")]
    cmd += ["--output", str(tmp_path / "data"), *sbatch, "--", *corpus]
    env = slurm.env(PYTHON=str(ROOT / ".venv" / "bin" / "python"), OMP_NUM_THREADS="1")
    return slurm.hosts.run(slurm.controller, cmd, timeout=60, env=env, cwd=ROOT)


def test_array_job_on_slurm_equals_the_single_process_job(slurm, tmp_path, corpus, reference):  # noqa: F811
    result = driver(slurm, tmp_path, corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = dict(
        line.split()
        for line in result.stdout.splitlines()
        if line.split()[:1] in [["scan"], ["keep"], ["encode"], ["merge"]]
    )
    assert list(jobs) == ["scan", "keep", "encode", "merge"]
    state = slurm.wait(int(jobs["merge"]), timeout=300)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "work" / "logs").glob("*.out")))
    assert state == "COMPLETED", logs[-4000:]
    # The array tasks ran on both nodes.
    assert all(f"{node}: scan, task" in logs or f"{node}: encode, task" in logs for node in slurm.nodes), logs
    assert_same_dataset(tmp_path / "data", reference)


def test_a_refused_submission_stops_the_driver_and_says_why(slurm, tmp_path, corpus):  # noqa: F811
    result = driver(slurm, tmp_path, corpus, "--sbatch", "--partition=nosuch")
    assert result.returncode != 0
    assert "error: sbatch failed for the scan phase" in result.stderr, result.stderr
    assert "invalid partition" in result.stderr.lower(), result.stderr
