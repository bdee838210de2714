"""The few lines that end bench/gpu/gpu_bench.py's output and its report's "summary": machine, smoke, tests,
kernels, FusedAdam, matmul peak, each training case with the planner's prediction, the targets, time."""

from __future__ import annotations

from typing import Any

from bench.targets import GPU_MFU_TARGETS, PLANNER_TOLERANCE

GIB = 2**30


def case_line(r: dict[str, Any]) -> str:
    """A case's measurement in one line."""
    if r["status"] != "ok":
        return f"{r['status']} {r.get('reason', '')}".strip()
    line = (
        f"micro {r['micro_batch']} x {r['accum']} = {r['tokens_per_step']:,} tokens/step: "
        f"{r['tokens_per_s']:,.0f} tok/s"
    )
    if r.get("mfu") is not None:
        line += f", MFU {r['mfu']:.1%}, HFU {r['hfu']:.1%}"
    if r.get("optimizer_step_extra_s") is not None:
        step_s = r["window_s"] / max(1, r["timed_optimizer_steps"])
        line += f", optimizer step +{r['optimizer_step_extra_s'] * 1e3:.0f} ms of a {step_s:.3g} s step"
    return line + (
        f", peak memory {r['peak_memory_bytes'] / GIB:.1f} GiB, {r['optimizer']}, ZeRO {r['zero_stage']}"
        f"{', compiled' if r.get('compile') else ''}, kernels {','.join(sorted(set(r['kernels'].values())))}"
    )


def plan_note(p: dict[str, Any]) -> str:
    """The planner's prediction for a case, in a few words."""
    if not p:
        return ""
    if not p.get("predicted_peak_bytes"):
        return f"; planner: {p['status']}"
    note = f"; planner: memory {p['predicted_peak_bytes'] / GIB:.1f} GiB"
    if p.get("measured_over_predicted_memory") is not None:
        ratio, flag = p["measured_over_predicted_memory"], _within(p["memory_within_15pct"])
        note += f" (measured/predicted {ratio:.2f}, {flag})"
    for key, words in (
        ("given_measured_mfu", "at its measured MFU"),
        ("given_reference_mfu", "at the MFU of"),
    ):
        g = p.get(key)
        if not g or g.get("measured_over_predicted") is None:
            continue
        words += f" {p['reference_case']}" if key == "given_reference_mfu" else ""
        ratio, flag = g["measured_over_predicted"], _within(g["within_15pct"])
        note += f"; tok/s {words} {g['mfu']:.3f}: measured/predicted {ratio:.2f} ({flag})"
    return note


def _within(flag: bool | None) -> str:
    within = f"within {PLANNER_TOLERANCE:.0%}"
    return {True: within, False: f"NOT {within}", None: "-"}[flag]


def target_lines(cases: dict[str, Any], plans: dict[str, Any]) -> list[str]:
    """The targets (bench/targets.py) against what ran: best MFU per preset, the planner within its
    tolerance in every case."""
    lines = []
    for preset, target in GPU_MFU_TARGETS.items():
        ok = {n: r for n, r in cases.items() if r.get("status") == "ok" and r["case"]["preset"] == preset}
        ok = {n: r for n, r in ok.items() if r.get("mfu") is not None}
        if not ok:
            lines.append(f"target {preset} MFU >= {target:.0%}: not measured")
            continue
        best = max(ok, key=lambda n: ok[n]["mfu"])
        verdict = "met" if ok[best]["mfu"] >= target else "missed"
        line = f"target {preset} MFU >= {target:.0%}: {verdict}, best {ok[best]['mfu']:.1%} ({best})"
        shipped = ok.get(f"{preset}-shipped")
        if shipped is not None:
            line += f"; shipped layout {shipped['mfu']:.1%} at {shipped['tokens_per_step']:,} tokens/step"
        lines.append(line)
    for key, what in (("memory_within_15pct", "memory"), ("given_measured_mfu", "tok/s at the measured MFU")):
        flags = [p.get(key) if key.startswith("memory") else (p.get(key) or {}).get("within_15pct")
                 for p in plans.values()]  # fmt: skip
        flags = [f for f in flags if f is not None]
        if flags:
            within = f"within {PLANNER_TOLERANCE:.0%}"
            lines.append(f"target planner {what} {within} in every case: {sum(flags)} of {len(flags)}")
    return lines


def summary_lines(data: dict[str, Any]) -> list[str]:
    m, st = data.get("machine") or {}, data["stages"]
    v = m.get("versions", {})
    lines = [
        f"machine: {m.get('gpu') or 'no GPU'} ({m.get('gpu_key')}), driver {m.get('driver')}, python "
        f"{m.get('python')}, torch {v.get('torch')} (CUDA {m.get('torch_cuda')}), triton {v.get('triton')}, "
        f"deepspeed {v.get('deepspeed')}, nvcc: {m.get('nvcc')}"
    ]
    lines.append(f"smoke: {case_line(st['smoke']) if 'case' in st['smoke'] else st['smoke']['status']}")
    t = st["tests"]
    counts = ", ".join(f"{t[k]} {k}" for k in ("passed", "failure", "error", "skipped") if t.get(k))
    lines.append(
        f"tests: {t['status']}"
        + (f" ({counts})" if counts else "")
        + (f": {t['reason']}" if t.get("reason") else "")
    )
    k = st["kernels"]
    for c in k.get("checks", []):
        diffs = (
            f"max diff out {c['max_out_diff']:.2e}, grad {c['max_grad_diff']:.2e}"
            if "max_out_diff" in c
            else ""
        )
        lines.append(f"kernel {c['name']}: {c['status']} {diffs or c.get('reason', '')}".rstrip())
    if not k.get("checks"):
        lines.append(f"kernels: {k['status']}")
    a = st["fused-adam"]
    adam = ""
    if "build_or_load_s" in a:
        adam = (
            f", built or loaded in {a['build_or_load_s']:.0f} s (TORCH_CUDA_ARCH_LIST {a.get('arch_list')!r})"
        )
        adam += f", max diff vs torch AdamW {a['max_param_diff_vs_torch_adamw']:.1e}"
    lines.append(f"FusedAdam: {a['status']}{adam}")
    mm = st["matmul"]
    if mm.get("best_tflops"):
        rated = (
            f" = {mm['best_vs_rated']:.0%} of rated {mm['rated_tflops']:.0f}"
            if mm.get("rated_tflops")
            else ""
        )
        lines.append(
            f"matmul {mm['precision']}: best {mm['best_tflops']:.4g} TFLOP/s at {mm['best_shape']}{rated}"
        )
    else:
        lines.append(f"matmul: {mm['status']}")
    plans = st["planner"].get("cases", {})
    cases = st["training"].get("cases", {})
    for name, r in cases.items():
        line = f"case {name} ({r['case']['lever']}): {case_line(r)}"
        if r.get("mfu") is not None and mm.get("best_tflops"):
            of_measured = r["mfu"] * r["rated_peak_tflops"] / mm["best_tflops"]
            line += f"; MFU {of_measured:.0%} of the measured matmul peak"
        lines.append(line + plan_note(plans.get(name, {})))
    lines += target_lines(cases, plans)
    lines.append(f"planner: {st['planner']['status']}")
    lines.append(f"total wall time {data.get('wall_s', 0):.0f} s (budget {data['budget_s']:.0f} s)")
    return lines
