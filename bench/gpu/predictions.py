"""codeparrot-plan's predictions for the training cases of bench/gpu/gpu_bench.py, beside the measurements.

The planner (plan/memory.py, console script codeparrot-plan) is called per case with the case's layout
(preset and kernel choices, DeepSpeed JSON and ZeRO stage, sequence length, micro batch and accumulation,
one rank, activation checkpointing, precision, the GPU), in one process for all calls:

- at its default ``--mfu``: the memory prediction (``memory.peak_bytes``, against
  torch.cuda.max_memory_allocated) and the tokens/s a user would be told;
- given the measured MFU: ``--mfu`` is the planner's utilisation of the FLOPs executed (recomputation
  included, ``speed.executed_flops_per_token``), i.e. the case's HFU in the planner's own FLOP count. Its
  tokens/s then differs from the measurement only by what the planner adds beside compute (communication it
  does not hide, a pipeline bubble): on one GPU this checks its FLOP and time accounting;
- given the MFU measured in the first measured case of the same preset (``reference``): whether one
  measured figure carries to the other layouts (recomputation, micro batch, ZeRO stage), as a user would
  plan with it.

Each comparison has a ratio measured/predicted and a flag, whether it lies within 1 +- the planner's target
tolerance (bench/targets.py; the flags' keys, `..._within_15pct`, keep the name of the report's format).
Where the planner is missing the record says "planner unavailable". On a CPU (--cpu-smoke) the measured
memory is the process's RSS, not comparable with a GPU prediction: the flags are computed but mean nothing
there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gpu.cases import UNFUSED
from bench.targets import PLANNER_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]
# One process for every call: each call's exit status and output, as one JSON line printed last.
PLANNER_BATCH = """
import contextlib, io, json, sys
from plan.cli import main
calls = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv) or 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    calls.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(calls))
"""


def planner_argv(record: dict[str, Any], gpu_key: str, mfu: float | None = None) -> list[str]:
    """codeparrot-plan's arguments for a case's record (``case``: gpu_bench's Case as a dict; the micro
    batch it ran at, after out-of-memory retries), at ``mfu`` or the planner's default."""
    case = record["case"]
    micro = record.get("micro_batch", case["micro"])
    accum = record.get("accum", max(1, case["global_batch"] // micro))
    ac = "--activation-checkpointing" if case["activation_checkpointing"] else "--no-activation-checkpointing"
    argv = [
        f"--preset={case['preset']}", f"--ds_config={case['ds']}", f"--seq-len={case['seq']}",
        f"--micro-batch={micro}", f"--grad-accum={accum}", f"--precision={case['precision']}", "--dp=1",
        f"--gpu={gpu_key}", ac, "--json",
    ]  # fmt: skip
    if case.get("zero_stage") is not None:
        argv.append(f"--zero={case['zero_stage']}")
    if mfu is not None:
        argv.append(f"--mfu={mfu:.6g}")
    if not case["fused"]:
        argv += ["--set", *(f"{k}={v}" for k, v in UNFUSED.items())]
    return argv


def within(ratio: float | None) -> bool | None:
    return None if ratio is None else abs(ratio - 1) <= PLANNER_TOLERANCE


def ratio(measured: float | None, predicted: float | None) -> float | None:
    return measured / predicted if measured and predicted else None


def planner_mfu(plan: dict[str, Any], result: dict[str, Any]) -> float | None:
    """The case's measured utilisation in the planner's terms: tokens/s x the planner's executed FLOPs per
    token / the planner's peak of the GPU; None when not measured (or zero: the planner wants (0, 1])."""
    executed = plan.get("speed", {}).get("executed_flops_per_token")
    peak = plan.get("gpu", {}).get("peak_tflops")
    if result.get("status") != "ok" or not executed or not peak or not result.get("tokens_per_s"):
        return None
    return min(1.0, result["tokens_per_s"] * executed / (peak * 1e12))


def compare(plan: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The planner's default prediction beside the measured figures (``result``: a case's record)."""
    memory, speed = plan.get("memory", {}), plan.get("speed", {})
    out: dict[str, Any] = {
        "predicted_peak_bytes": memory.get("peak_bytes"),
        "fits": memory.get("fits"),
        "mfu_default": speed.get("mfu"),
        "predicted_tokens_per_s_default_mfu": speed.get("tokens_per_s_per_gpu"),
        "executed_flops_per_token": speed.get("executed_flops_per_token"),
    }
    if result.get("status") != "ok":
        return out
    out["measured_over_predicted_memory"] = ratio(
        result.get("peak_memory_bytes"), out["predicted_peak_bytes"]
    )
    out["memory_within_15pct"] = within(out["measured_over_predicted_memory"])
    out["measured_over_predicted_tokens_per_s_default_mfu"] = ratio(
        result["tokens_per_s"], out["predicted_tokens_per_s_default_mfu"]
    )
    out["measured_planner_mfu"] = planner_mfu(plan, result)
    return out


def speed_given(plan: dict[str, Any], mfu: float, result: dict[str, Any]) -> dict[str, Any]:
    """The planner's tokens/s at ``mfu`` beside the measured tokens/s."""
    predicted = plan.get("speed", {}).get("tokens_per_s_per_gpu")
    r = ratio(result.get("tokens_per_s"), predicted)
    return {
        "mfu": mfu,
        "predicted_tokens_per_s": predicted,
        "measured_over_predicted": r,
        "within_15pct": within(r),
    }


def run_planner(argvs: list[list[str]], env: dict[str, str], timeout: float) -> tuple[list[Any] | None, str]:
    """Each argv's (rc, out, err) from one process; (None, why) when that process fails."""
    cmd = [sys.executable, "-c", PLANNER_BATCH, json.dumps(argvs)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout).strip()
        status = "planner unavailable" if "No module named 'plan'" in err else "failed"
        return None, status + ": " + "\n".join(err.splitlines()[-5:])
    return json.loads(lines[-1]), ""


def parsed(call: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    if call["rc"] != 0:
        return None, (call["err"] or call["out"])[-1000:]
    try:
        return json.loads(call["out"]), ""
    except ValueError as e:
        return None, f"no JSON ({e}): {call['out'][-500:]}"


def references(results: dict[str, dict[str, Any]], mfus: dict[str, float | None]) -> dict[str, str]:
    """Per preset, the first case (in the run's order) with a measured MFU: the others are predicted at it."""
    refs: dict[str, str] = {}
    for name, r in results.items():
        if mfus.get(name) is not None:
            refs.setdefault(r["case"]["preset"], name)
    return refs


def predict_all(
    results: dict[str, dict[str, Any]], gpu_key: str, env: dict[str, str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The planner's predictions for each case (gpu_bench's records, by name), measured or not."""
    argvs = {name: planner_argv(r, gpu_key) for name, r in results.items()}
    calls, why = run_planner(list(argvs.values()), env, timeout / 2)
    if calls is None:
        status = why.split(":")[0]
        return {name: {"status": status, "argv": argv, "error": why} for name, argv in argvs.items()}
    out: dict[str, dict[str, Any]] = {}
    plans: dict[str, dict[str, Any]] = {}
    for (name, argv), call in zip(argvs.items(), calls, strict=True):
        plan, error = parsed(call)
        if plan is None:
            out[name] = {"status": "failed", "argv": argv, "error": error}
            continue
        plans[name] = plan
        out[name] = {"status": "ok", "argv": argv, **compare(plan, results[name]), "plan": plan}
    mfus = {name: out[name].get("measured_planner_mfu") for name in plans}
    refs = references(results, mfus)
    given: list[tuple[str, str, float]] = []  # (case, which, mfu)
    for name, mfu in mfus.items():
        if mfu is None:
            continue
        given.append((name, "given_measured_mfu", mfu))
        ref = refs.get(results[name]["case"]["preset"])
        if ref is not None and ref != name:
            given.append((name, "given_reference_mfu", mfus[ref]))
            out[name]["reference_case"] = ref
    argv2 = [planner_argv(results[name], gpu_key, mfu) for name, _, mfu in given]
    calls2, why2 = run_planner(argv2, env, timeout / 2) if argv2 else ([], "")
    if calls2 is None:
        for name, which, _ in given:
            out[name][which] = {"status": "failed", "error": why2}
        return out
    for (name, which, mfu), call in zip(given, calls2, strict=True):
        plan, error = parsed(call)
        out[name][which] = (
            {"status": "failed", "error": error} if plan is None else speed_given(plan, mfu, results[name])
        )
    return out
