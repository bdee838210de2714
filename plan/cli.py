"""codeparrot-plan's command line and what it says: the inputs (preset or run config, ds_config, overrides,
GPU) made into a plan.memory.Plan, rendered as a table or JSON; for a layout that does not fit, the
single changes that would; with --suggest, the layouts that fit ranked by speed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from cmdline import EXIT_CHECK_FAILED, EXIT_OK
from cmdline.args import OneLineParser, fraction, positive_float, positive_int
from model.config import GPTConfig
from model.flops import flops_per_token
from plan.comm import DEFAULT_NET_GBPS, NCCL_EFFICIENCY
from plan.memory import (
    DEFAULT_GLOBAL_BATCH,
    DEFAULT_MFU,
    GIB,
    PHASE_TITLES,
    SAFETY_FRACTION,
    Gpu,
    Layout,
    Plan,
    gpu_from_table,
    plan,
)
from plan.memory import __doc__ as PLANNER_DOC
from plan.search import advice, distinct, suggest
from training.config import RunConfig
from training.gpus import GPUS, resolve_gpu
from training.precision import DeviceInfo, PrecisionChoice, decide


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(
        prog="codeparrot-plan",
        description=PLANNER_DOC,
        example="codeparrot-plan --preset codeparrot --gpus 16 --ds_config ds_configs/zero3.json\n"
        "codeparrot-plan --config configs/codeparrot_zero2.json --ds_config ds_configs/zero2.json --gpus 8\n"
        "codeparrot-plan --preset codeparrot --suggest --nodes 4   # the layouts that fit, fastest first",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="model preset (tiny, codeparrot-small, codeparrot); default tiny")
    src.add_argument("--config", help="run config JSON: its model, seq_len, batch, stages, checkpointing")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model overrides (n_layer=4), or with --config any section.key=value",
    )
    p.add_argument("--ds_config", help="DeepSpeed JSON: ZeRO stage, offload, bucket sizes, bf16")
    p.add_argument("--seq-len", type=positive_int)
    p.add_argument("--micro-batch", type=positive_int)
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--grad-accum", type=positive_int)
    batch.add_argument(
        "--global-batch", type=positive_int, help=f"sequences per step (default {DEFAULT_GLOBAL_BATCH})"
    )
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3))
    p.add_argument("--offload", choices=("none", "optimizer", "all"))
    p.add_argument("--pipeline-stages", type=positive_int)
    world = p.add_mutually_exclusive_group()
    world.add_argument("--dp", type=positive_int, help="data-parallel size")
    world.add_argument("--gpus", type=positive_int, help="total GPUs (dp x pipeline stages)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--precision", choices=("bf16", "fp32"))
    p.add_argument(
        "--gpu",
        help=f"one of {', '.join(GPUS)}, or H100 (taken as h100-sxm), H200, A100 (a100-80gb), any case; "
        "default h100-sxm",
    )
    p.add_argument("--gpu-memory-gib", type=positive_float, help="a GPU not in the table: its memory (GiB)")
    p.add_argument(
        "--gpu-tflops", type=positive_float, help="... and its dense peak TFLOP/s in the run's precision"
    )
    p.add_argument(
        "--intra-node-gbs",
        type=positive_float,
        help="GB/s per direction between GPUs of a node (default: the GPU table's NVLink or PCIe rate)",
    )
    p.add_argument(
        "--net-gbps",
        type=positive_float,
        default=DEFAULT_NET_GBPS,
        help=f"inter-node Gb/s per GPU (default {DEFAULT_NET_GBPS:g}: one NDR InfiniBand NIC per GPU); "
        f"collectives reach {NCCL_EFFICIENCY:.0%}% of each link",  # %% for argparse
    )
    p.add_argument(
        "--mfu",
        type=fraction,
        default=DEFAULT_MFU,
        help="MFU of a layout with neither recomputation nor pipeline bubble, i.e. the fraction of the "
        "dense peak sustained on the FLOPs executed (default %(default)s); recompute and bubbles lower it",
    )
    p.add_argument(
        "--tokens", type=positive_float, help="tokens to train on, for the days it takes (e.g. 30e9)"
    )
    p.add_argument(
        "--suggest", action="store_true", help="rank the layouts that fit on --nodes x --gpus-per-node"
    )
    p.add_argument("--nodes", type=positive_int, default=1)
    p.add_argument(
        "--gpus-per-node", type=positive_int, default=8, help="where collectives leave the node (default 8)"
    )
    p.add_argument("--top", type=positive_int, default=5, help="with --suggest: layouts shown (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="PNG", help="also draw its memory per phase into PNG (not --suggest)")
    args = p.parse_args(argv)
    if args.plot and args.suggest:
        p.error("--plot draws one layout's memory; --suggest ranks many. Plan the chosen layout with --plot")
    return args


def _flag_sets(args: argparse.Namespace) -> list[str]:
    """The sizing flags as the run-config keys they name, applied after --config and --set."""
    sets = [
        f"{key}={json.dumps(value)}"
        for key, value in (
            ("data.seq_len", args.seq_len),
            ("train.micro_batch", args.micro_batch),
            ("train.pipeline_stages", args.pipeline_stages),
            ("train.precision", args.precision),
            ("train.activation_checkpointing", args.activation_checkpointing),
        )
        if value is not None
    ]
    if args.activation_checkpointing is False:  # also off where the model's overrides turned it on
        sets.append("model.activation_checkpointing=false")
    if args.grad_accum:
        sets += [f"train.grad_accum={args.grad_accum}", "train.global_batch=null"]
    if args.global_batch:
        sets += [f"train.global_batch={args.global_batch}", "train.grad_accum=null"]
    return sets


def planned_run(args: argparse.Namespace) -> RunConfig:
    """The run config the plan is for: --config (or the defaults), --preset, --set (a bare key is a model
    field: n_layer=4), then the sizing flags. Without --config, a run the planner sizes itself: the
    model's whole context and DEFAULT_GLOBAL_BATCH sequences per step unless said otherwise."""
    from model.presets import get_preset
    from training.config import load_run_config

    sets = [s if "." in s.partition("=")[0] else f"model.{s}" for s in args.set]
    sets = ([f"model.preset={args.preset}"] if args.preset else []) + sets + _flag_sets(args)
    run = load_run_config(args.config, sets)
    if args.config is not None:
        return run
    defaults = [f"data.seq_len={get_preset(run.model.preset, **run.model.overrides).n_positions}"]
    if run.train.grad_accum is None and run.train.global_batch is None:
        defaults.append(f"train.global_batch={DEFAULT_GLOBAL_BATCH}")
    return load_run_config(None, defaults + sets)


def _planned_gpu_precision(requested: str, device_type: str, width: int, rows: int) -> PrecisionChoice:
    """Training's rule for a GPU (every GPU of the table runs bf16 natively), without a device to ask."""
    return decide(requested, DeviceInfo(device_type="cuda", name="the planned GPU", cuda_bf16=True))


def _offload(zo: dict[str, Any]) -> str:
    if zo.get("offload_param", {}).get("device", "none") != "none":
        return "all"
    if zo.get("offload_optimizer", {}).get("device", "none") != "none":
        return "optimizer"
    return "none"


def layout_from_args(args: argparse.Namespace) -> tuple[GPTConfig, str, Layout, str]:
    """The model, its preset and the layout, as training's validate() derives them from the run config, the
    DeepSpeed JSON (--zero replaces its stage) and the world (--gpus, or --dp x the pipeline stages); the
    planned GPU's precision rule; --offload and the tuning the planner models from the JSON."""
    from training.validate import load_ds_config, validate

    run = planned_run(args)
    ds: dict[str, Any] = load_ds_config(args.ds_config) if args.ds_config else {}
    if args.zero is not None:
        ds = {**ds, "zero_optimization": {**ds.get("zero_optimization", {}), "stage": args.zero}}
    source = args.ds_config if args.ds_config and args.zero is None else f"--zero {args.zero or 0}"
    stages = run.train.pipeline_stages
    gpus = args.gpus or (args.dp * stages if args.dp else stages)
    setup = validate(run, ds, source, gpus, "cuda", _planned_gpu_precision, on_this_host=False)
    if setup.precision.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision {setup.precision.precision!r}: the planner models bf16 and fp32")
    zo, defaults = (
        setup.ds_config.get("zero_optimization", {}),
        Layout(seq_len=1, micro_batch=1, grad_accum=1),
    )
    lay = Layout(
        seq_len=run.data.seq_len,
        micro_batch=run.train.micro_batch,
        grad_accum=setup.grad_accum,
        dp=setup.dp_size,
        pipeline_stages=stages,
        zero_stage=setup.zero_stage,
        offload=args.offload or _offload(zo),
        activation_checkpointing=setup.model.activation_checkpointing,
        precision=setup.precision.precision,
        reduce_bucket_size=int(zo.get("reduce_bucket_size", defaults.reduce_bucket_size)),
        overlap_comm=zo.get("overlap_comm"),
        contiguous_gradients=zo.get("contiguous_gradients", True),
        prefetch_bucket_size=int(zo.get("stage3_prefetch_bucket_size", defaults.prefetch_bucket_size)),
        max_live_parameters=int(zo.get("stage3_max_live_parameters", defaults.max_live_parameters)),
        param_persistence_threshold=int(
            zo.get("stage3_param_persistence_threshold", defaults.param_persistence_threshold)
        ),
        communication_data_type=setup.ds_config.get("communication_data_type"),
        multi_rank_bucket_allreduce=zo.get("use_multi_rank_bucket_allreduce", True),
        gpus_per_node=args.gpus_per_node,
    )
    return setup.model, run.model.preset, lay, source


def _gpu(args: argparse.Namespace, precision: str) -> Gpu:
    if args.gpu_memory_gib or args.gpu_tflops:
        if not (args.gpu_memory_gib and args.gpu_tflops):
            raise ValueError("give both --gpu-memory-gib and --gpu-tflops for a GPU not in the table")
        gpu = Gpu("custom", args.gpu_memory_gib, args.gpu_tflops)
    else:
        try:
            key, note = resolve_gpu(args.gpu or "h100-sxm")
        except KeyError as e:
            raise ValueError(f"{e.args[0]} (or give --gpu-memory-gib and --gpu-tflops)") from None
        if note:
            print(note, file=sys.stderr)
        gpu = gpu_from_table(key, precision)
    return dataclasses.replace(gpu, intra_node_gb_s=args.intra_node_gbs) if args.intra_node_gbs else gpu


def main(argv: Sequence[str] | None = None) -> int:
    """Print the plan (or with --suggest the best layouts). Exit status 1 when the layout does not fit, 2
    with the reason on bad input (cmdline's convention)."""
    from training.config import ConfigError

    args = parse_args(argv)
    try:
        model, preset, lay, source = layout_from_args(args)
        gpu = _gpu(args, lay.precision)
        if args.suggest:
            gpus = args.nodes * args.gpus_per_node
            found = suggest(model, gpus, gpu, lay, args.mfu, args.tokens, preset, args.net_gbps)
            if not found:
                raise ValueError(
                    f"no layout of ZeRO 1-3, pipeline 1-8 stages and micro-batch 1-32 fits "
                    f"{preset} on {gpus} x {gpu.name}: use more GPUs or a larger GPU"
                )
            if args.json:
                out = {
                    "gpus": gpus,
                    "fitting": len(found),
                    "suggestions": [plan_dict(p) for p in distinct(found, args.top)],
                }
                print(json.dumps(out, indent=2))
            else:
                print(suggestions_text(distinct(found, args.top), gpus, len(found)))
            return 0
        result = plan(
            model,
            lay,
            gpu,
            mfu=args.mfu,
            tokens=args.tokens,
            preset=preset,
            source=source,
            net_gbps=args.net_gbps,
        )
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan_dict(result), indent=2) if args.json else plan_text(result))
    if args.plot:
        from plan.draw import write_memory_plot  # matplotlib only when asked for

        print(f"memory plot: {write_memory_plot(result, args.plot)}", file=sys.stderr)
    return EXIT_OK if result.fits else EXIT_CHECK_FAILED  # the plan is printed either way


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _layout_line(lay: Layout) -> str:
    offload = "" if lay.offload == "none" else f", offload {lay.offload}"
    ckpt = "on" if lay.activation_checkpointing else "off"
    return (
        f"{lay.gpus} GPU(s) = {lay.pipeline_stages} pipeline stage(s) x {lay.dp} data-parallel, ZeRO "
        f"{lay.zero_stage}{offload}, {lay.precision}, activation checkpointing {ckpt}\n"
        f"batch:  micro {lay.micro_batch} x grad_accum {lay.grad_accum} x dp {lay.dp} = {lay.global_batch} "
        f"sequences of {lay.seq_len} tokens = {lay.global_batch * lay.seq_len:,} tokens per step"
    )


def plan_text(p: Plan) -> str:
    """The plan as a table: model, layout, memory terms per phase, fit, speed."""
    d = plan_dict(p)
    m, lay, speed = p.model, p.layout, d["speed"]
    where = f" (pipeline stage {p.stage}, the largest)" if lay.pipeline_stages > 1 else ""
    lines = [
        f"model:  {p.preset}, {p.parameters:,} parameters, {m.n_layer} layers x {m.n_embd} wide, "
        f"{d['model']['flops_per_token'] / 1e9:.2f} GFLOP per token (training)",
        f"layout: {_layout_line(lay)}",
        f"gpu:    {p.gpu.name}, {p.gpu.memory_gib:.1f} GiB, "
        f"{p.gpu.peak_tflops:g} TFLOP/s dense {lay.precision}",
        "",
        f"memory per GPU{where}:",
    ]
    for phase, title in PHASE_TITLES.items():
        terms = [t for t in p.terms if t.phase == phase]
        if not terms:
            continue
        lines.append(f"  {title}:")
        for t in terms:
            on = " (host)" if t.device == "cpu" else ""
            lines.append(f"    {t.name:<28}{_gib(t.bytes)}{on}  {t.note}")
    fit = "fits" if p.fits else "DOES NOT FIT"
    lines += [
        f"  {'peak (kept + the larger phase)':<30}{_gib(p.peak_bytes)}",
        f"  {'usable':<30}{_gib(p.usable_bytes)}  ({SAFETY_FRACTION:.0%} of {p.gpu.memory_gib:.1f} GiB kept "
        f"for the CUDA context, fragmentation, NCCL): {fit}",
    ]
    host = p.total(device="cpu")
    if host:
        lines.append(f"  {'host memory per rank':<30}{_gib(host)}")
    lines += [f"  {a}" for a in d["memory"]["advice"]]
    days = ""
    if speed["days_to_train"] is not None:
        days = f", {speed['tokens'] / 1e9:,.1f} B tokens in {speed['days_to_train']:.2f} days"
    lines += [
        "",
        f"speed at {p.mfu:.0%} of peak on the FLOPs executed (the stated MFU, without recompute or bubble; "
        f"here recompute x{speed['recompute_factor']:.2f}, pipeline bubble {speed['bubble_fraction']:.1%}: "
        f"exposed communication included: MFU {speed['model_flops_utilization']:.1%}):",
        f"  step {speed['step_time_s']:.3f} s = compute {speed['compute_time_s']:.3f} s + exposed "
        f"communication {speed['exposed_comm_s']:.3f} s: {speed['tokens_per_s']:,.0f} tokens/s "
        f"({speed['tokens_per_s_per_gpu']:,.0f} per GPU), "
        f"{speed['tokens_per_day'] / 1e9:.2f} B tokens/day{days}",
    ]
    return "\n".join(lines + comm_lines(p))


def comm_lines(p: Plan) -> list[str]:
    """Per GPU per step: each kind of traffic, its time on the link and the part compute does not hide."""
    if not p.comm:
        return ["  communication: none (one GPU)"]
    lay = p.layout
    out = [
        f"communication per GPU per step (ring collectives at {NCCL_EFFICIENCY:.0%} of the link: "
        f"{p.gpu.intra_node_gb_s:g} GB/s within a node, {p.net_gbps:g} Gb/s network; "
        f"{lay.gpus_per_node} GPUs per node; overlap_comm {str(lay.overlap).lower()}):"
    ]
    for t in p.comm:
        out.append(
            f"    {t.name:<28}{t.bytes / 1e9:8.2f} GB {t.time_s * 1e3:8.1f} ms, "
            f"exposed {t.exposed_s * 1e3:7.1f} ms  {t.note}"
        )
    total = sum(t.bytes for t in p.comm)
    time = sum(t.time_s for t in p.comm)
    out.append(
        f"  {'total':<30}{total / 1e9:8.2f} GB {time * 1e3:8.1f} ms, exposed {p.exposed_comm_s * 1e3:7.1f} ms"
    )
    return out


def _why(p: Plan) -> str:
    lay, reasons = p.layout, []
    reasons.append("no recompute" if not lay.activation_checkpointing else "recompute x4/3 to fit")
    if lay.pipeline_stages > 1:
        reasons.append(f"bubble {p.bubble:.1%}")
    reasons.append(
        {
            1: "ZeRO-1: optimizer states sharded, gradients reduced once per step",
            2: "ZeRO-2: gradients sharded too, reduced every micro-batch",
            3: "ZeRO-3: parameters sharded, gathered twice every micro-batch",
        }[lay.zero_stage]
    )
    comm = sum(t.bytes for t in p.comm)
    reasons.append(f"comm {comm / 1e9:.1f} GB/GPU/step, {p.exposed_comm_s * 1e3:.0f} ms exposed")
    reasons.append(f"peak {p.peak_bytes / GIB:.1f} of {p.usable_bytes / GIB:.1f} GiB usable")
    return "; ".join(reasons)


def suggestions_text(plans: list[Plan], gpus: int, fitting: int) -> str:
    first = plans[0]
    head = (
        f"{first.preset} on {gpus} x {first.gpu.name}, global batch {first.layout.global_batch} x "
        f"{first.layout.seq_len} tokens, overlap_comm {str(first.layout.overlap).lower()}: {fitting} layouts "
        "fit; the fastest of each kind:"
    )
    lines = [head]
    for i, p in enumerate(plans, 1):
        lay = p.layout
        flag = " --activation-checkpointing" if lay.activation_checkpointing else ""
        lines.append(
            f"{i}. --zero {lay.zero_stage} --pipeline-stages {lay.pipeline_stages} --micro-batch "
            f"{lay.micro_batch} (grad_accum {lay.grad_accum}){flag}: {p.tokens_per_s:,.0f} tokens/s, "
            f"step {p.step_time_s:.2f} s\n     {_why(p)}"
        )
    return "\n".join(lines)


def plan_dict(p: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (the keys of `codeparrot-plan --json`)."""
    lay, m = p.layout, p.model
    model_flops = flops_per_token(m, lay.seq_len)
    days = None if p.tokens is None else p.tokens / p.tokens_per_s / 86400
    return {
        "model": {
            "preset": p.preset,
            **m.to_dict(),
            "parameters": p.parameters,
            "flops_per_token": model_flops,
        },
        "layout": {
            **dataclasses.asdict(lay),
            "overlap_comm": lay.overlap,
            "gpus": lay.gpus,
            "global_batch": lay.global_batch,
            "tokens_per_step": lay.global_batch * lay.seq_len,
        },
        "gpu": dataclasses.asdict(p.gpu),
        "memory": {
            "stage": p.stage,
            "terms": [{**dataclasses.asdict(t), "gib": t.bytes / GIB} for t in p.terms],
            "resident_bytes": p.resident_bytes,
            "peak_bytes": p.peak_bytes,
            "peak_gib": p.peak_bytes / GIB,
            "usable_gib": p.usable_bytes / GIB,
            "host_bytes": p.total(device="cpu"),
            "fits": p.fits,
            "advice": [] if p.fits else advice(p),
        },
        "speed": {
            "mfu": p.mfu,
            "executed_flops_per_token": p.executed_flops_per_token,
            "recompute_factor": p.executed_flops_per_token / model_flops,
            "bubble_fraction": p.bubble,
            "model_flops_utilization": p.mfu
            * (model_flops / p.executed_flops_per_token)
            * (1 - p.bubble)
            * (p.compute_time_s / p.step_time_s),
            "step_time_s": p.step_time_s,
            "compute_time_s": p.compute_time_s,
            "comm_bytes_per_gpu": sum(t.bytes for t in p.comm),
            "comm_time_s": sum(t.time_s for t in p.comm),
            "exposed_comm_s": p.exposed_comm_s,
            "comm_terms": [dataclasses.asdict(t) for t in p.comm],
            "net_gbps": p.net_gbps,
            "tokens_per_s": p.tokens_per_s,
            "tokens_per_s_per_gpu": p.tokens_per_s / lay.gpus,
            "tokens_per_day": p.tokens_per_s * 86400,
            "tokens": p.tokens,
            "days_to_train": days,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
