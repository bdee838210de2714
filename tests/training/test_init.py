"""The initialisation training really uses: the model's own, identical for every layout (real 2 ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.launcher import deepspeed_command

from .conftest import check, run

pytestmark = pytest.mark.slow


def test_plain_zero3_and_pipeline_start_from_the_models_own_init(tmp_path):
    out = tmp_path / "init.json"
    cmd = deepspeed_command(Path(__file__).with_name("init_worker.py"), f"--out={out}")
    check(run(cmd, tmp_path))
    result = json.loads(out.read_text())
    assert result["zero3_partitioned"], result
    assert result["plain"] == 0.0 and result["zero3"] == 0.0 and result["pipeline"] == 0.0, result
    assert result["other_seed"] > 0.01, result  # the check can tell two initialisations apart
