"""bench/gpu: the GPU benchmark's CPU smoke mode end to end, run.sh, and the out-of-memory retries.

No timing assertions: the figures only have to exist and be positive; the report's structure is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu.gpu_bench import STAGES, Budget, Case, with_retries

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "bench" / "gpu"


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_writes_the_report(tmp_path: Path) -> None:
    cmd = [sys.executable, str(GPU / "gpu_bench.py"), "--cpu-smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    for key in ("schema", "mode", "command", "started", "finished", "wall_s", "machine", "stages", "summary"):
        assert key in report, key
    assert report["mode"] == "cpu-smoke" and report["status"] == "ok"
    stages = report["stages"]
    assert list(stages) == list(STAGES)
    assert stages["fused-adam"]["status"] == "skipped"  # GPU-only stages are recorded as skipped
    assert stages["env"]["status"] == "ok" and stages["env"]["versions"]["torch"]
    tests = stages["tests"]
    assert tests["status"] == "ok" and tests["skipped"] == len(tests["tests"]) > 0  # no CUDA: all skip
    kernels = {c["name"].split()[0]: c for c in stages["kernels"]["checks"]}
    assert kernels["attention"]["status"] == kernels["cross_entropy"]["status"] == "ok"
    assert kernels["layernorm"]["status"] == kernels["bias_gelu"]["status"] == "skipped"
    assert stages["matmul"]["best_tflops"] > 0 and stages["matmul"]["rated_tflops"] is None

    cases = stages["training"]["cases"]
    assert set(cases) == {"tiny fused", "tiny unfused"}
    for case in cases.values():
        assert case["status"] == "ok" and case["attempts"] == [{"micro_batch": 2, "status": "ok"}]
        assert case["tokens_per_s"] > 0 and case["peak_memory_bytes"] > 0 and case["mfu"] is None
        assert case["timed_steps"] == 2 and len(case["step_s"]) == 3 and case["zero_stage"] == 2
        assert (tmp_path / "gpu_logs" / case["log"]).exists()
    assert set(cases["tiny unfused"]["kernels"].values()) == {"torch"}
    assert cases["tiny fused"]["kernels"]["attention"] == "sdpa"

    planner = stages["planner"]
    assert planner["status"] in ("ok", "planner unavailable")
    for name, p in planner["cases"].items():
        assert "--micro-batch=2" in p["argv"] and "--json" in p["argv"], name
        if planner["status"] == "ok":
            assert p["predicted_peak_bytes"] > 0 and p["measured_over_predicted_memory"] > 0
    assert report["summary"][-1] == "status: ok"
    assert any(line.startswith("case tiny fused: micro 2:") for line in report["summary"])


def test_run_sh_runs_the_driver_and_keeps_a_log(tmp_path: Path) -> None:
    env = {**os.environ, "SKIP_INSTALL": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    cmd = ["bash", str(GPU / "run.sh"), "--cpu-smoke", "--stages", "env"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["stages"]["env"]["status"] == "ok" and report["install"] is None
    assert report["stages"]["training"] == {"status": "skipped", "reason": "not selected (--stages)"}
    assert "run.sh: gpu_bench.py exited 0" in (tmp_path / "gpu_bench.log").read_text()


def test_build_wheels_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(GPU / "build_wheels.sh")], check=True)


def small_case(micro: int = 8) -> Case:
    return Case(name="c", preset="tiny", micro=micro, seq=64, fused=True, activation_checkpointing=False)


def test_out_of_memory_halves_the_micro_batch_until_it_fits() -> None:
    tried = []

    def attempt(micro: int) -> dict:
        tried.append(micro)
        return {"status": "oom"} if micro > 2 else {"status": "ok", "micro_batch": micro}

    result = with_retries(small_case(), attempt, Budget(started=1e12, total_s=1e6))
    assert tried == [8, 4, 2] and result["status"] == "ok" and result["micro_batch"] == 2
    assert [a["status"] for a in result["attempts"]] == ["oom", "oom", "ok"]


def test_out_of_memory_at_micro_batch_one_and_no_budget_stop_the_retries() -> None:
    result = with_retries(small_case(micro=2), lambda m: {"status": "oom"}, Budget(1e12, 1e6))
    assert result["status"] == "oom" and [a["micro_batch"] for a in result["attempts"]] == [2, 1]
    spent = Budget(started=0.0, total_s=1.0)  # started in 1970: nothing left
    result = with_retries(small_case(), lambda m: pytest.fail("must not start"), spent)
    assert result["status"] == "skipped" and result["attempts"] == []
