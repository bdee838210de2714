"""codeparrot-plan's predictions for the training cases of bench/gpu/gpu_bench.py.

The planner (training/planner.py, console script codeparrot-plan) is called once per measured case with the
case's layout (preset and kernel choices, DeepSpeed JSON, sequence length, micro batch, no accumulation, one
rank, activation checkpointing, precision, the GPU) at its default MFU. From its JSON the report keeps:
``memory.peak_bytes`` (the predicted per-GPU peak, against torch.cuda.max_memory_allocated), ``memory.fits``,
``speed.tokens_per_s_per_gpu`` at ``speed.mfu`` and the MFU that would have predicted the measured tokens/s:
``--mfu`` is a fraction of the peak on the FLOPs executed (checkpointing recomputes the blocks' forward,
``speed.executed_flops_per_token``), while the case's MFU counts model FLOPs (model.flops), as the planner's
``speed.model_flops_utilization`` does. Where the planner is missing the record says "planner unavailable".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# One process for every case: each call's exit status and output, as one JSON line printed last.
PLANNER_BATCH = """
import contextlib, io, json, sys
from training.planner import main
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


def planner_argv(case: dict[str, Any], micro: int, kernels: dict[str, str], gpu_key: str) -> list[str]:
    """codeparrot-plan's arguments for a case (gpu_bench.Case as a dict) at micro batch ``micro``;
    ``kernels``: the model config's kernel fields the case overrode."""
    ac = "--activation-checkpointing" if case["activation_checkpointing"] else "--no-activation-checkpointing"
    argv = [
        f"--preset={case['preset']}", f"--ds_config={case['ds']}", f"--seq-len={case['seq']}",
        f"--micro-batch={micro}", "--grad-accum=1", "--zero=2", f"--precision={case['precision']}", "--dp=1",
        f"--gpu={gpu_key}", ac, "--json",
    ]  # fmt: skip
    if kernels:
        argv += ["--set", *(f"{k}={v}" for k, v in kernels.items())]
    return argv


def compare(plan: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The planner's figures beside the measured ones (``result``: a case's record, status ok or not)."""
    memory, speed, gpu = plan.get("memory", {}), plan.get("speed", {}), plan.get("gpu", {})
    out = {
        "predicted_peak_bytes": memory.get("peak_bytes"),
        "fits": memory.get("fits"),
        "mfu_assumed": speed.get("mfu"),
        "predicted_tokens_per_s": speed.get("tokens_per_s_per_gpu"),
        "predicted_model_flops_utilization": speed.get("model_flops_utilization"),
        "executed_flops_per_token": speed.get("executed_flops_per_token"),
    }
    if result.get("status") != "ok":
        return out
    if out["predicted_peak_bytes"]:
        out["measured_over_predicted_memory"] = result["peak_memory_bytes"] / out["predicted_peak_bytes"]
    if out["predicted_tokens_per_s"]:
        out["measured_over_predicted_tokens_per_s"] = result["tokens_per_s"] / out["predicted_tokens_per_s"]
    if out["executed_flops_per_token"] and gpu.get("peak_tflops"):
        executed = result["tokens_per_s"] * out["executed_flops_per_token"]
        out["mfu_matching_measurement"] = executed / (gpu["peak_tflops"] * 1e12)
    return out


def predict_all(
    results: dict[str, dict[str, Any]], gpu_key: str, env: dict[str, str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The planner's prediction for each case (gpu_bench's records, by name) beside its measurement."""
    from bench.gpu.train_case import UNFUSED

    argvs = {
        name: planner_argv(
            r["case"],
            r.get("micro_batch", r["case"]["micro"]),
            {} if r["case"]["fused"] else UNFUSED,
            gpu_key,
        )
        for name, r in results.items()
    }
    cmd = [sys.executable, "-c", PLANNER_BATCH, json.dumps(list(argvs.values()))]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {name: {"status": "timeout", "argv": argv} for name, argv in argvs.items()}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr or proc.stdout).strip()
        status = "planner unavailable" if "No module named 'training.planner'" in err else "failed"
        error = "\n".join(err.splitlines()[-5:])
        return {name: {"status": status, "argv": argv, "error": error} for name, argv in argvs.items()}
    calls = json.loads(lines[-1])
    return {
        name: one(call, argv, results[name]) for (name, argv), call in zip(argvs.items(), calls, strict=True)
    }


def one(call: dict[str, Any], argv: list[str], result: dict[str, Any]) -> dict[str, Any]:
    if call["rc"] != 0:
        return {"status": "failed", "argv": argv, "error": (call["err"] or call["out"])[-1000:]}
    try:
        plan = json.loads(call["out"])
    except ValueError as e:
        return {"status": "failed", "argv": argv, "error": f"no JSON ({e})", "out": call["out"][-500:]}
    return {"status": "ok", "argv": argv, **compare(plan, result), "plan": plan}
