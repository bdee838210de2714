"""Each dataset's manifest.json is read once per rank in a whole run: validation opens it into a
DatasetManifest that the start-up checks, the resume key, the rank's data and fill-in-the-middle use."""

from __future__ import annotations

import pytest

from .conftest import check, run, run_config, single_cmd

pytestmark = pytest.mark.slow


def test_a_run_reads_each_manifest_once(tiny_data, tmp_path):
    from .conftest import ROOT

    cfg = run_config(tmp_path, tiny_data, max_steps=2, eval_interval=1, save_interval=2)
    worker = ROOT / "tests" / "training" / "manifest_reads_worker.py"
    result = check(run(single_cmd(cfg, "zero2_cpu.json", script=worker), tmp_path))
    assert "fill-in-the-middle: 50% of training documents" in result.stdout  # the FIM path is exercised
    reads = [
        x.removeprefix("manifest read: ")
        for x in result.stdout.splitlines()
        if x.startswith("manifest read: ")
    ]
    assert reads == [str(tiny_data.resolve())], reads
