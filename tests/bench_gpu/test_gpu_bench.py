"""bench/gpu: run.sh end to end in --cpu-smoke mode (its output limits, the install, the archive), the smoke
report surviving a stopped run, the test stage's all-skipped rule, the cases, the planner's arguments and
the out-of-memory retries.

No timing assertions: the figures only have to exist and be positive; the report's structure is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from bench.gpu import cases as cases_mod
from bench.gpu.gpu_bench import (
    ARCHIVE,
    REPORT,
    STAGES,
    Budget,
    Context,
    Report,
    parse_args,
    stage_tests,
    status_of_tests,
    with_retries,
)
from bench.gpu.predictions import planner_argv, within
from bench.gpu.procs import Processes, worker_env

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "bench" / "gpu"
OUT_LIMIT = 8  # files a device run brings back


def probe_wheel(where: Path) -> Path:
    """A pure wheel of one module, for run.sh's offline install (the real wheels are built elsewhere)."""
    where.mkdir(parents=True)
    whl = where / "codeparrot_gpu_probe-1.0-py3-none-any.whl"
    info = "codeparrot_gpu_probe-1.0.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("codeparrot_gpu_probe/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: codeparrot-gpu-probe\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return whl


def out_files(out: Path) -> list[Path]:
    entries = list(out.iterdir())
    assert all(e.is_file() for e in entries), f"not a plain file in {out}: {entries}"
    assert len(entries) <= OUT_LIMIT, entries
    return entries


def archive_members(out: Path) -> dict[str, str]:
    """Each file of the archive (names under gpu_logs/) and its text."""
    with tarfile.open(out / ARCHIVE) as tar:
        return {
            m.name: tar.extractfile(m).read().decode(errors="replace") for m in tar.getmembers() if m.isfile()
        }


@pytest.mark.slow
def test_run_sh_cpu_smoke_writes_only_the_report_and_one_archive(tmp_path: Path) -> None:
    out, site, tmp = tmp_path / "out", tmp_path / "site", tmp_path / "tmp"
    tmp.mkdir()
    probe_wheel(tmp_path / "wheels")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WHEELS": str(tmp_path / "wheels"),
           "SITE": str(site), "TMPDIR": str(tmp)}  # fmt: skip
    env.pop("LOGS", None)
    proc = subprocess.run(["bash", str(GPU / "run.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert sorted(e.name for e in out_files(out)) == sorted([REPORT, ARCHIVE])
    report = json.loads((out / REPORT).read_text())
    for key in (
        "schema",
        "mode",
        "command",
        "started",
        "finished",
        "wall_s",
        "machine",
        "install",
        "summary",
    ):
        assert key in report, key
    assert report["mode"] == "cpu-smoke" and report["status"] == "ok", report["summary"]
    stages = report["stages"]
    assert list(stages) == list(STAGES)

    # The install: the missing wheel went into SITE with --target, and the stages imported it from there.
    assert report["install"]["rc"] == 0 and "codeparrot_gpu_probe" in report["install"]["tail"]
    assert (site / "codeparrot_gpu_probe" / "__init__.py").exists()
    assert str(site) in stages["env"]["pythonpath"] and stages["env"]["versions"]["torch"]

    smoke = stages["smoke"]
    assert smoke["status"] == "ok" and smoke["case"]["name"] == "smoke" and smoke["tokens_per_s"] > 0
    assert stages["fused-adam"]["status"] == "skipped"  # a CUDA op
    tests = stages["tests"]
    assert tests["status"] == "ok" and tests["passed"] > 0 and tests["skipped"] >= 7  # the GPU tests skip
    kernels = {c["name"].split()[0]: c for c in stages["kernels"]["checks"]}
    assert kernels["attention"]["status"] == kernels["cross_entropy"]["status"] == "ok"
    assert stages["matmul"]["best_tflops"] > 0 and stages["matmul"]["rated_tflops"] is None

    cases = stages["training"]["cases"]
    assert list(cases) == [c.name for c in cases_mod.cpu_cases()]
    for case in cases.values():
        assert case["status"] == "ok" and case["attempts"] == [{"micro_batch": 2, "status": "ok"}]
        assert case["grad_accum"] == case["accum"] == 2 and case["tokens_per_step"] == 2 * 2 * 64
        assert case["timed_optimizer_steps"] == 2 and len(case["micro_batch_s"]) == 4
        assert case["tokens_per_s"] > 0 and case["peak_memory_bytes"] > 0 and case["mfu"] is None
        assert case["executed_flops_per_token"] >= case["flops_per_token"] > 0
    tiny, other = cases["tiny"], cases["tiny-zero1-unfused"]
    assert tiny["zero_stage"] == 2 and other["zero_stage"] == 1
    assert tiny["executed_flops_per_token"] > tiny["flops_per_token"]  # checkpointing recomputes
    assert other["executed_flops_per_token"] == other["flops_per_token"]
    assert set(other["kernels"].values()) == {"torch"} and tiny["kernels"]["attention"] == "sdpa"

    planner = stages["planner"]
    assert planner["status"] == "ok" and set(planner["cases"]) == {*cases, "smoke"}
    for name, p in planner["cases"].items():
        assert "--grad-accum=2" in p["argv"] and p["predicted_peak_bytes"] > 0, name
        assert p["memory_within_15pct"] in (True, False)
        assert p["given_measured_mfu"]["within_15pct"] in (True, False)
    assert planner["cases"]["tiny-zero1-unfused"]["reference_case"] == "tiny"
    assert report["summary"][-1] == "status: ok"

    members = archive_members(out)
    assert all(name.startswith("gpu_logs/") for name in members)
    assert "run.sh: gpu_bench.py exited 0" in members["gpu_logs/run.log"]  # the final archive: complete
    assert "codeparrot_gpu_probe" in members["gpu_logs/install.log"]
    logged = [smoke["log"], tests["log"], stages["env"]["log"], *(c["log"] for c in cases.values())]
    for log in logged:
        assert f"gpu_logs/{log}" in members, log
    assert json.loads(members[f"gpu_logs/{REPORT}"])["status"] == "ok"


@pytest.mark.slow
def test_the_smoke_report_comes_back_when_the_run_is_stopped_later(tmp_path: Path) -> None:
    """A run stopped (SIGTERM, as run.sh's timeout sends) during a later stage leaves the report with the
    smoke stage and the archive with its log, and no stage process behind."""
    out, logs = tmp_path / "out", tmp_path / "work" / "gpu_logs"
    cmd = [sys.executable, "-m", "bench.gpu.gpu_bench", "--cpu-smoke", f"--out={out}", f"--logs={logs}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            report = json.loads((out / REPORT).read_text()) if (out / REPORT).exists() else {}
            if report.get("stages", {}).get("smoke", {}).get("status", "pending") != "pending":
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    names = {e.name for e in out_files(out)}
    assert {REPORT, ARCHIVE} <= names <= {REPORT, ARCHIVE, f".{REPORT}.part", f".{ARCHIVE}.part"}
    report = json.loads((out / REPORT).read_text())
    assert report["status"] == "stopped by signal 15"
    assert report["stages"]["smoke"]["status"] == "ok"
    assert report["stages"]["training"]["status"] == "pending"
    assert f"gpu_logs/{report['stages']['smoke']['log']}" in archive_members(out)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(logs) not in ps  # the stage that was running was ended with the driver


def test_a_test_stage_in_which_no_test_passed_failed(tmp_path: Path) -> None:
    assert status_of_tests("ok", {"passed": 0, "failure": 0, "error": 0, "skipped": 7}) == (
        "failed",
        "every one of the 7 tests skipped",
    )
    assert status_of_tests("ok", {}) == ("failed", "no test ran")
    assert status_of_tests("ok", {"passed": 1, "skipped": 6}) == ("ok", None)
    assert status_of_tests("timeout", {"passed": 3}) == ("timeout", None)
    # The GPU selection on this CUDA-less machine: pytest exits 0 with everything skipped; the stage fails.
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    budget = Budget(time.time(), 300)
    ctx = Context(smoke=False, device="cuda", logs=logs, env=worker_env(True), budget=budget,
                  report=Report(out, logs, {}), procs=Processes(), selected=STAGES, cases=[],
                  say=print)  # fmt: skip
    record = stage_tests(ctx)
    assert record["status"] == "failed" and record["passed"] == 0 and record["skipped"] >= 7
    assert record["reason"].startswith("every one of the") and "-m gpu" in record["command"]


def test_cases_train_the_shipped_tokens_per_optimizer_step() -> None:
    shipped = cases_mod.shipped()
    assert (shipped.preset, shipped.micro, shipped.global_batch, shipped.seq) == ("codeparrot", 8, 512, 1024)
    gpu = cases_mod.gpu_cases()
    first = gpu[0]
    assert (
        first.name == "codeparrot-shipped"
        and first.activation_checkpointing == shipped.activation_checkpointing
    )
    assert {"--micro-batch=8", "--grad-accum=64", "--seq-len=1024"} <= set(first.argv(8))
    assert "--grad-accum=128" in first.argv(4)  # an out-of-memory retry keeps the tokens per step
    assert all(c.accum(c.micro) * c.micro * c.seq == 512 * 1024 for c in gpu)
    assert len({c.name for c in gpu}) == len(gpu)
    assert {"--zero-stage=1"} <= set(cases_mod.select(gpu, "small-zero1")[0].argv(16))
    assert "--compile" in cases_mod.select(gpu, "small-compile")[0].argv(16)
    assert [c.name for c in cases_mod.select(gpu, "small,codeparrot-shipped")] == [
        "small",
        "codeparrot-shipped",
    ]
    with pytest.raises(ValueError, match="unknown cases"):
        cases_mod.select(gpu, "small,nope")


@pytest.mark.parametrize("ac", [True, False])
def test_executed_flops_per_token_is_the_planners(ac: bool) -> None:
    from model.presets import get_preset
    from plan.memory import Layout, plan
    from training.gpus import GPUS

    cfg = get_preset("codeparrot")
    lay = Layout(seq_len=1024, micro_batch=8, grad_accum=64, zero_stage=2, activation_checkpointing=ac)
    expected = plan(cfg, lay, GPUS["h200"]).executed_flops_per_token
    assert cases_mod.executed_flops_per_token(cfg, 1024, ac) == expected


def test_planner_arguments_follow_the_case_as_it_ran() -> None:
    case = cases_mod.select(cases_mod.gpu_cases(), "small-zero1")[0]
    record = {"case": {**case.__dict__}, "micro_batch": 8, "accum": 64}
    argv = planner_argv(record, "h200", mfu=0.4123456)
    assert {"--micro-batch=8", "--grad-accum=64", "--zero=1", "--gpu=h200", "--mfu=0.412346"} <= set(argv)
    assert "--no-activation-checkpointing" in argv and "--set" not in argv
    unfused = cases_mod.select(cases_mod.gpu_cases(), "small-unfused")[0]
    argv = planner_argv({"case": {**unfused.__dict__}}, "h200")
    assert "--grad-accum=32" in argv and "attention=torch" in argv and not any("--zero" in a for a in argv)
    assert within(1.1) and within(0.86) and not within(1.2) and within(None) is None


def test_out_may_not_be_under_bench_results_nor_hold_the_logs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", str(ROOT / "bench" / "results")])
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--logs", str(tmp_path / "gpu_logs")])
    with pytest.raises(SystemExit):
        parse_args(["--cases", "nope"])
    assert parse_args(["--out", str(tmp_path / "o"), "--logs", str(tmp_path / "l")]).out == tmp_path / "o"


def test_shell_scripts_parse() -> None:
    for script in ("run.sh", "build_wheels.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)


def small_case(micro: int = 8) -> cases_mod.Case:
    return cases_mod.Case(name="c", lever="", preset="tiny", micro=micro, global_batch=micro * 2, seq=64,
                          activation_checkpointing=False)  # fmt: skip


def test_out_of_memory_halves_the_micro_batch_until_it_fits() -> None:
    tried = []

    def attempt(micro: int) -> dict:
        tried.append(micro)
        return {"status": "oom"} if micro > 2 else {"status": "ok", "micro_batch": micro}

    result = with_retries(small_case(), attempt, Budget(started=1e12, total_s=1e6))
    assert tried == [8, 4, 2] and result["status"] == "ok" and result["micro_batch"] == 2
    assert [a["status"] for a in result["attempts"]] == ["oom", "oom", "ok"]
    assert small_case().accum(2) == 8  # 16 sequences per step, as at micro batch 8


def test_out_of_memory_at_micro_batch_one_and_no_budget_stop_the_retries() -> None:
    result = with_retries(small_case(micro=2), lambda m: {"status": "oom"}, Budget(1e12, 1e6))
    assert result["status"] == "oom" and [a["micro_batch"] for a in result["attempts"]] == [2, 1]
    spent = Budget(started=0.0, total_s=1.0)  # started in 1970: nothing left
    result = with_retries(small_case(), lambda m: pytest.fail("must not start"), spent)
    assert result["status"] == "skipped" and result["attempts"] == []
