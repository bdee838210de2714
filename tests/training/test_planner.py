"""codeparrot-plan: its memory model against DeepSpeed (2 real CPU ranks) and against a meta-device forward,
its arithmetic from first principles, and its command line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import model.gpt2 as gpt2
from bench.launcher import BIN, deepspeed_command
from model.flops import flops_per_token
from model.presets import get_preset
from plan.cli import main, plan_dict
from plan.comm import NCCL_EFFICIENCY
from plan.memory import GIB, SAFETY_FRACTION, Gpu, Layout, block_activation_bytes, gpu_from_table, plan
from training import gpus, metrics

from .conftest import check, run
from .memory_worker import MICRO_BATCH, MODELS, SEQ_LEN

# |predicted - measured| / measured, per rank. Measured with deepspeed 0.19.8, torch 2.13.0, 2 CPU ranks
# (AMD EPYC): at most 0.0066% in fp32 and 0.0057% in bf16 (ZeRO-0 tiny: 112 bytes of DeepSpeed's small
# tensors; ZeRO-2/3: 12-13 bytes). 1% is 150 times the largest.
TOLERANCE = 0.01
PRECISIONS = ("fp32", "bf16")
# DeepSpeed JSONs as the shipped *_cpu.json, with buckets small enough not to dwarf the models measured
# (ZeRO-3 keeps its reduce bucket for the whole run).
DS_CONFIGS = {
    0: {"zero_optimization": {"stage": 0}},
    2: {
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 200_000,
            "allgather_bucket_size": 200_000,
        }
    },
    3: {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 200_000,
            "stage3_prefetch_bucket_size": 200_000,
            "stage3_param_persistence_threshold": 0,
        }
    },
}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys, *argv: str) -> dict:
    """The plan as JSON; exit status 0 when it fits, 1 when it does not (it is printed either way)."""
    code, out, err = cli(capsys, *argv, "--json")
    d = json.loads(out)
    assert code == (0 if "suggestions" in d or d["memory"]["fits"] else 1), err
    return d


def model_args(name: str) -> list[str]:
    preset, overrides = MODELS[name]
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return ["--preset", preset, *(["--set", *sets] if sets else [])]


# ---- 1. model states against DeepSpeed on 2 CPU ranks ----------------------------------------------------


@pytest.mark.slow
def test_model_state_memory_matches_what_deepspeed_allocates(tmp_path, capsys):
    paths = {}
    for stage, ds in DS_CONFIGS.items():
        paths[stage] = tmp_path / f"zero{stage}.json"
        paths[stage].write_text(json.dumps({**ds, "steps_per_print": 1_000_000}))
    out = tmp_path / "measured.json"
    cmd = deepspeed_command(
        Path(__file__).with_name("memory_worker.py"), f"--out={out}",
        "--ds=" + ",".join(str(p) for p in paths.values()), "--precisions=" + ",".join(PRECISIONS),
    )  # fmt: skip
    check(run(cmd, tmp_path))
    measured = json.loads(out.read_text())
    rows, errors = [], []
    for prec, (stage, path), name in itertools.product(PRECISIONS, paths.items(), MODELS):
        predicted = cli_json(
            capsys, *model_args(name), "--ds_config", str(path), "--gpus", "2", "--precision", prec,
            "--seq-len", str(SEQ_LEN), "--micro-batch", str(MICRO_BATCH), "--grad-accum", "1",
        )["memory"]["resident_bytes"]  # fmt: skip
        for rank, got in enumerate(measured[prec][str(path)][name]):
            error = abs(predicted - got) / got
            rows.append(
                f"{prec} ZeRO-{stage} {name} rank {rank}: "
                f"predicted {predicted:,} measured {got:,} ({error:.4%})"
            )
            errors.append(error)
    print("\n".join(rows))
    assert len(errors) == 2 * len(PRECISIONS) * len(MODELS) * len(DS_CONFIGS)
    assert max(errors) <= TOLERANCE, "\n".join(rows)


# ---- 2. the 1.5B on the meta device -------------------------------------------------------------------


def test_codeparrot_parameter_count_is_the_meta_builds():
    cfg = get_preset("codeparrot")
    with torch.device("meta"):
        built = sum(p.numel() for p in gpt2.GPT(cfg).parameters())
    assert plan(cfg, Layout(seq_len=1024, micro_batch=1, grad_accum=1), Gpu("x", 80, 1)).parameters == built
    assert built == 1_529_628_800


def _flash(q, k, v, *, dropout_p=0.0, impl="auto"):
    # What SDPA runs on an A100/H100 in bf16; on the meta device SDPA would pick its math path, which keeps
    # the T x T matrix that a GPU run never holds.
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, True)[0]


def saved_for_backward(block: torch.nn.Module, x: torch.Tensor, activation_checkpointing: bool) -> int:
    """Bytes of the unique storages a forward of `block` saves for backward, parameters excluded."""
    params = {p.untyped_storage()._cdata for p in block.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if activation_checkpointing:
            checkpoint(block, x, use_reentrant=False)
        else:
            block(x)
    return sum(seen.values())


@pytest.mark.parametrize("activation_checkpointing", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_block_activation_bytes_are_what_a_meta_forward_saves(monkeypatch, activation_checkpointing, dropout):
    monkeypatch.setattr(gpt2, "causal_attention", _flash)
    cfg = get_preset("codeparrot", embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout)
    B, T = 2, 1024
    with torch.device("meta"):
        block = gpt2.Block(cfg).to(torch.bfloat16).train()
        x = torch.empty(B, T, cfg.n_embd, dtype=torch.bfloat16, requires_grad=True)
    saved = saved_for_backward(block, x, activation_checkpointing)
    # The meta (and CPU) dropout keeps its mask in the input's dtype; CUDA's fused dropout keeps bools
    # (1 byte), which the planner assumes by default.
    full = block_activation_bytes(cfg, B, T, act_bytes=2, mask_bytes=2)
    predicted = B * T * cfg.n_embd * 2 if activation_checkpointing else full
    assert abs(predicted - saved) / saved <= 0.001, (predicted, saved)
    lay = Layout(seq_len=T, micro_batch=B, grad_accum=1, activation_checkpointing=activation_checkpointing)
    p = plan(cfg, lay, Gpu("x", 1000, 1))
    acts = next(t.bytes for t in p.terms if t.name == "activations")
    assert acts == cfg.n_layer * (
        predicted if activation_checkpointing else block_activation_bytes(cfg, B, T, 2)
    )


def test_zero2_32_gpus_memory_from_first_principles():
    """codeparrot, ZeRO-2 (ds_configs/zero2.json: buckets 5e7, overlap_comm), 32 GPUs, micro 8, bf16,
    activation checkpointing."""
    cfg = get_preset("codeparrot")
    N, L, d, H, V, Vp = 1_529_628_800, 48, 1600, 25, 32768, 32768
    B, T, dp, bucket = 8, 1024, 32, 50_000_000
    state = 2 * N + 4 * N // dp + 8 * N // dp  # bf16 params, fp32 master and Adam moments of the partition
    BTd = B * T * d
    block = 16 * BTd * 2 + 2 * BTd + 16 * B * T + 4 * B * H * T + 24  # a block's saved tensors, recomputed
    chunk = 256 * 2**20 // (4 * V)  # rows of the chunked loss on CUDA
    backward = (
        2 * N // dp  # the bf16 gradient partition
        + 2 * 2 * bucket  # two reduce buckets (overlap_comm)
        + L * BTd * 2  # block inputs kept by checkpointing
        + block  # one block recomputed
        + BTd  # embedding dropout mask
        + BTd * 2 + 8 * B * T  # ln_f input and statistics
        + B * T * d * 2 + Vp * d * 2  # the head gradients the chunked loss keeps
        + chunk * V * 6 + V * d * 6 + BTd * 2 + Vp * d * 6  # its buffers while it runs
    )  # fmt: skip
    step = 2 * N // dp + 4 * N // dp
    lay = Layout(
        seq_len=T, micro_batch=B, grad_accum=2, dp=dp, zero_stage=2, activation_checkpointing=True,
        reduce_bucket_size=bucket, overlap_comm=True,
    )  # fmt: skip
    p = plan(cfg, lay, Gpu("h100-sxm", 81559 / 1024, 989))
    assert p.resident_bytes == pytest.approx(state, abs=64)
    assert p.peak_bytes == pytest.approx(state + max(backward, step), abs=64)
    assert p.fits and 6 * GIB < p.peak_bytes < 7 * GIB


def test_speed_counts_recompute_and_the_pipeline_bubble():
    cfg = get_preset("codeparrot")
    gpu = Gpu("g", 80, 1000)
    base = Layout(seq_len=1024, micro_batch=4, grad_accum=8, dp=8, zero_stage=1)
    p = plan(cfg, base, gpu, mfu=0.5)
    tokens_per_step = 4 * 8 * 8 * 1024
    f = plan_dict(p)["model"]["flops_per_token"]
    assert p.compute_time_s == pytest.approx(tokens_per_step * f / (8 * 1000e12 * 0.5))
    assert p.step_time_s == pytest.approx(p.compute_time_s + p.exposed_comm_s) and p.exposed_comm_s > 0
    ckpt = plan(cfg, Layout(**{**base.__dict__, "activation_checkpointing": True}), gpu, mfu=0.5)
    recompute = 2 * 48 * (12 * 1600**2 + 13 * 1600) + 4 * 48 * 1600 * 1024  # the blocks' forward again
    assert ckpt.compute_time_s / p.compute_time_s == pytest.approx((f + recompute) / f)
    assert 1.25 < ckpt.compute_time_s / p.compute_time_s < 4 / 3 + 1e-9
    piped = plan(
        cfg, Layout(**{**base.__dict__, "pipeline_stages": 4, "dp": 2, "grad_accum": 32}), gpu, mfu=0.5
    )
    assert piped.bubble == pytest.approx(3 / 35)
    assert piped.compute_time_s == pytest.approx(p.compute_time_s / (1 - 3 / 35))


# ---- 3. communication ---------------------------------------------------------------------------------

H100 = Gpu("h100-sxm", 81559 / 1024, 989, 450)
ZERO2_32 = Layout(
    seq_len=1024, micro_batch=8, grad_accum=2, dp=32, zero_stage=2, activation_checkpointing=True,
    reduce_bucket_size=50_000_000, overlap_comm=True,
)  # fmt: skip


def test_zero2_traffic_on_4_nodes_by_hand():
    """codeparrot, ZeRO-2 as ds_configs/zero2.json on 4 x 8 GPUs: DeepSpeed all-reduces each bf16 gradient
    bucket in every micro-batch (use_multi_rank_bucket_allreduce), then all-gathers the bf16 parameters."""
    cfg, N, n, m = get_preset("codeparrot"), 1_529_628_800, 32, 2
    p = plan(cfg, ZERO2_32, H100, mfu=0.45)
    grads = m * int(2 * (n - 1) / n * 2 * N)  # ring all-reduce, 2 bytes per gradient, x2 micro-batches
    params = int((n - 1) / n * 2 * N)  # ring all-gather of the updated bf16 parameters
    assert [(t.name, t.bytes) for t in p.comm] == [
        ("gradient all-reduce", grads),
        ("parameter all-gather", params),
    ]
    net = 400e9 / 8 * NCCL_EFFICIENCY  # the group spans nodes: one 400 Gb/s NIC per GPU
    assert [t.time_s for t in p.comm] == pytest.approx([grads / net, params / net])
    micro = p.compute_time_s / m
    forward = micro * flops_per_token(cfg, 1024) / 3 / p.executed_flops_per_token
    last_bucket = 2 * (n - 1) / n * 2 * 50_000_000 / net
    hidden = max(grads / net - m * (micro - forward), m * last_bucket)  # overlapped with backward
    assert p.exposed_comm_s == pytest.approx(hidden + params / net)
    assert p.step_time_s == pytest.approx(p.compute_time_s + p.exposed_comm_s)
    speed = plan_dict(p)["speed"]
    assert speed["comm_bytes_per_gpu"] == grads + params
    assert speed["exposed_comm_s"] == pytest.approx(p.exposed_comm_s)
    one_node = plan(cfg, Layout(**{**ZERO2_32.__dict__, "dp": 8, "grad_accum": 8}), H100)
    assert one_node.comm[0].time_s == pytest.approx(one_node.comm[0].bytes / (450e9 * NCCL_EFFICIENCY))


def test_zero3_sends_more_than_zero2_and_zero1_amortises_over_grad_accum():
    cfg = get_preset("codeparrot")
    z2 = plan(cfg, ZERO2_32, H100)
    z3 = plan(cfg, Layout(**{**ZERO2_32.__dict__, "zero_stage": 3}), H100)
    assert [t.name for t in z3.comm] == [
        "parameter all-gather (fwd)", "parameter all-gather (bwd)", "gradient reduce-scatter",
    ]  # fmt: skip
    assert sum(t.bytes for t in z3.comm) > sum(t.bytes for t in z2.comm)
    # The same global batch in more, smaller micro-batches: ZeRO-1's traffic stays, ZeRO-3's grows.
    traffic, step = {}, {}
    for zero in (1, 3):
        for micro, accum in ((8, 2), (1, 16)):
            changes = {"zero_stage": zero, "micro_batch": micro, "grad_accum": accum}
            q = plan(cfg, Layout(**{**ZERO2_32.__dict__, **changes}), H100)
            traffic[zero, accum], step[zero, accum] = sum(t.bytes for t in q.comm), q.step_time_s
    assert traffic[1, 2] == traffic[1, 16]
    assert traffic[3, 16] == pytest.approx(8 * traffic[3, 2], rel=1e-6)
    assert step[3, 16] > step[1, 16]


def test_a_single_gpu_does_not_communicate(capsys):
    p = plan(get_preset("codeparrot-small"), Layout(seq_len=1024, micro_batch=8, grad_accum=4), H100)
    assert p.comm == [] and p.exposed_comm_s == 0 and p.step_time_s == p.compute_time_s
    d = cli_json(capsys, "--preset", "codeparrot-small", "--gpus", "1", "--zero", "2")
    speed = d["speed"]
    assert speed["comm_bytes_per_gpu"] == 0 and speed["comm_time_s"] == speed["exposed_comm_s"] == 0
    assert speed["model_flops_utilization"] == pytest.approx(speed["mfu"] / speed["recompute_factor"])


# ---- 4. the command line ------------------------------------------------------------------------------


def test_pipeline_with_zero2_is_refused_naming_deepspeeds_restriction(capsys):
    code, out, err = cli(
        capsys, "--preset", "codeparrot", "--gpus", "8", "--pipeline-stages", "4", "--zero", "2"
    )
    assert code == 2 and out == ""
    assert "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only" in err
    assert "pipeline_stages is 4" in err and "--zero 2" in err


def test_json_output_keys(capsys):
    d = cli_json(
        capsys, "--config", "configs/codeparrot_zero2.json", "--ds_config", "ds_configs/zero2.json",
        "--gpus", "32", "--gpu", "h100-sxm", "--tokens", "30e9",
    )  # fmt: skip
    assert set(d) == {"model", "layout", "gpu", "memory", "speed"}
    assert {"parameters", "flops_per_token", "preset", "n_layer"} <= set(d["model"])
    assert d["model"]["parameters"] == 1_529_628_800
    lay = d["layout"]
    assert (lay["zero_stage"], lay["dp"], lay["micro_batch"], lay["grad_accum"]) == (2, 32, 8, 2)
    assert lay["activation_checkpointing"] and lay["reduce_bucket_size"] == 50_000_000 and lay["overlap_comm"]
    mem = d["memory"]
    assert {"terms", "resident_bytes", "peak_bytes", "peak_gib", "usable_gib", "fits", "advice"} <= set(mem)
    assert {"name", "bytes", "gib", "phase", "device", "note"} == set(mem["terms"][0])
    assert mem["fits"] and mem["advice"] == []
    assert mem["usable_gib"] == pytest.approx(81559 / 1024 * (1 - SAFETY_FRACTION))
    speed = d["speed"]
    assert {"tokens_per_s", "step_time_s", "tokens_per_day", "days_to_train", "mfu"} <= set(speed)
    assert speed["days_to_train"] == pytest.approx(30e9 / speed["tokens_per_s"] / 86400)
    assert {"comm_bytes_per_gpu", "comm_time_s", "exposed_comm_s", "compute_time_s"} <= set(speed)
    assert speed["step_time_s"] == pytest.approx(speed["compute_time_s"] + speed["exposed_comm_s"])
    gpu = {"name": "h100-sxm", "memory_gib": 81559 / 1024, "peak_tflops": 989.0, "intra_node_gb_s": 450.0}
    assert d["gpu"] == gpu


def test_a_layout_that_does_not_fit_says_why_and_what_would(capsys):
    args = (
        "--preset",
        "codeparrot",
        "--gpus",
        "8",
        "--zero",
        "1",
        "--micro-batch",
        "16",
        "--gpu",
        "a100-40gb",
    )
    d = cli_json(capsys, *args, "--no-activation-checkpointing")
    mem = d["memory"]
    assert not mem["fits"] and mem["peak_gib"] > mem["usable_gib"]
    assert mem["advice"][0].startswith("largest term: activations")
    assert any(a.startswith("fits with --activation-checkpointing") for a in mem["advice"]), mem["advice"]
    code, out, _ = cli(capsys, *args)
    assert code == 1 and "DOES NOT FIT" in out  # a check failed: exit status 1


def test_suggest_for_codeparrot_on_4_nodes_of_8_h100(capsys):
    d = cli_json(capsys, "--preset", "codeparrot", "--suggest", "--nodes", "4", "--gpus-per-node", "8",
                 "--gpu", "h100-sxm")  # fmt: skip
    assert d["gpus"] == 32 and d["fitting"] >= len(d["suggestions"]) > 0
    best = d["suggestions"][0]
    assert best["memory"]["fits"] and best["memory"]["peak_gib"] <= best["memory"]["usable_gib"]
    assert best["layout"]["gpus"] == 32 and best["layout"]["global_batch"] == 512
    rates = [s["speed"]["tokens_per_s"] for s in d["suggestions"]]
    assert rates == sorted(rates, reverse=True)
    # ZeRO-3 repeats its traffic every micro-batch: it can lead only where one micro-batch makes the step.
    first_12 = next(i for i, s in enumerate(d["suggestions"]) if s["layout"]["zero_stage"] < 3)
    assert all(s["layout"]["grad_accum"] == 1 for s in d["suggestions"][:first_12])
    # Four times the batch (grad_accum >= 4 wherever the 1.5B fits): ZeRO-1 or 2 comes first.
    args = (
        "--preset",
        "codeparrot",
        "--suggest",
        "--nodes",
        "4",
        "--gpu",
        "h100-sxm",
        "--global-batch",
        "2048",
    )
    assert cli_json(capsys, *args)["suggestions"][0]["layout"]["zero_stage"] in (1, 2)
    code, out, _ = cli(capsys, *args)
    assert code == 0 and out.splitlines()[1].startswith("1. --zero ")
    assert "exposed" in out.splitlines()[2]


def test_one_gpu_table_for_the_planner_and_training_mfu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, key, tflops in [
        ("NVIDIA H100 PCIe", "h100-pcie", 756.0),
        ("NVIDIA H100 80GB HBM3", "h100-sxm", 989.0),
        ("NVIDIA H200", "h200", 989.0),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb", 312.0),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda n=name: n)
        assert metrics.peak_flops("bf16", None) == tflops * 1e12, name
        assert gpu_from_table(key, "bf16").peak_tflops == tflops
    assert gpu_from_table("h200", "bf16").memory_gib == pytest.approx(140.4, abs=0.05)
    assert gpu_from_table("a100-40gb", "fp32") == Gpu("a100-40gb", 40.0, 19.5, 300.0)
    assert gpu_from_table("h100-pcie", "bf16").intra_node_gb_s == 64.0
    assert gpus.gpu_key("NVIDIA A100-SXM4-80GB", 81920 * 2**20) == "a100-80gb"
    assert gpus.gpu_key("NVIDIA A100-SXM4-40GB", 40960 * 2**20) == "a100-40gb"
    assert gpus.gpu_key("NVIDIA H100 PCIe", 81559 * 2**20) == "h100-pcie"
    assert gpus.gpu_key("NVIDIA L4") is None


@pytest.mark.parametrize(
    ("typed", "key", "note"),
    [
        ("H100", "h100-sxm", "--gpu H100 taken as h100-sxm (also known: h100-pcie)"),
        ("h100", "h100-sxm", "--gpu h100 taken as h100-sxm (also known: h100-pcie)"),
        ("A100", "a100-80gb", "--gpu A100 taken as a100-80gb (also known: a100-40gb)"),
        ("H200", "h200", None),
        ("H100-PCIe", "h100-pcie", None),
        ("a100_40gb", "a100-40gb", None),
    ],
)
def test_gpu_names_as_people_type_them(capsys, typed, key, note):
    """--gpu takes the names people type and says which variant a short one was taken as."""
    assert main(["--preset", "codeparrot-small", "--gpu", typed, "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["gpu"]["name"] == key
    assert out.err.strip() == (note or "")


def test_an_unknown_gpu_is_refused_naming_the_choices(capsys):
    assert main(["--preset", "codeparrot-small", "--gpu", "L4"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: --gpu 'L4' is not a GPU of the table; choose one of a100-40gb, a100-80gb, h100-pcie, "
        "h100-sxm, h200, h100, a100 (or give --gpu-memory-gib and --gpu-tflops)"
    )


# The head of a script that makes torch and DeepSpeed unimportable, then imports codeparrot-plan's main.
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "deepspeed"):
            raise ImportError(f"codeparrot-plan imported {name}")
sys.meta_path.insert(0, NoTorch())
from plan.cli import main
"""
NO_TORCH = WITHOUT_TORCH + """
for argv in (
    ["--preset", "codeparrot-small", "--gpu", "h200", "--json"],
    ["--config", "configs/codeparrot_pipeline4_zero1.json", "--ds_config", "ds_configs/pipeline_zero1.json",
     "--gpus", "32"],
    ["--preset", "codeparrot", "--suggest", "--nodes", "2", "--gpu", "H100"],
):
    assert main(argv) == 0, argv
print("no torch")
"""


def test_codeparrot_plan_runs_without_importing_torch_or_deepspeed():
    """A plan, a pipeline plan (its stage cut included) and a search, torch and DeepSpeed unimportable."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("no torch"), out.stderr[-3000:]


def test_help_lists_every_option(capsys):
    """argparse %-formats every help text: a bare percent sign in one makes --help itself crash."""
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "collectives reach 70% of each link" in " ".join(out.split())
    for option in ("--mfu", "--net-gbps", "--suggest", "--gpu-memory-gib", "--offload"):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "option", "says"),
    [
        (("--gpus", "-8", "--micro-batch", "-1"), "--gpus", "-8 is not positive"),
        (("--gpus", "0"), "--gpus", "0 is not positive"),
        (("--micro-batch", "-1"), "--micro-batch", "-1 is not positive"),
        (("--dp", "0"), "--dp", "0 is not positive"),
        (("--pipeline-stages", "0"), "--pipeline-stages", "0 is not positive"),
        (("--seq-len", "0"), "--seq-len", "0 is not positive"),
        (("--grad-accum", "-2"), "--grad-accum", "-2 is not positive"),
        (("--global-batch", "0"), "--global-batch", "0 is not positive"),
        (("--suggest", "--nodes", "0"), "--nodes", "0 is not positive"),
        (("--gpus-per-node", "-8"), "--gpus-per-node", "-8 is not positive"),
        (("--top", "0"), "--top", "0 is not positive"),
        (("--gpus", "2.5"), "--gpus", "'2.5' is not a whole number"),
        (("--mfu", "0"), "--mfu", "0 is not in (0, 1]"),
        (("--mfu", "1.5"), "--mfu", "1.5 is not in (0, 1]"),
        (("--mfu", "nan"), "--mfu", "nan is not a finite number"),
        (("--gpu-memory-gib", "nan", "--gpu-tflops", "9"), "--gpu-memory-gib", "nan is not a finite number"),
        (("--gpu-memory-gib", "-80", "--gpu-tflops", "100"), "--gpu-memory-gib", "-80 is not positive"),
        (("--gpu-memory-gib", "80", "--gpu-tflops", "0"), "--gpu-tflops", "0 is not positive"),
        (("--net-gbps", "-400"), "--net-gbps", "-400 is not positive"),
        (("--net-gbps", "inf"), "--net-gbps", "inf is not a finite number"),
        (("--intra-node-gbs", "0"), "--intra-node-gbs", "0 is not positive"),
        (("--tokens=-30e9",), "--tokens", "-30e9 is not positive"),
    ],
)
def test_counts_and_rates_that_must_be_positive_are_refused_in_one_line(capsys, argv, option, says):
    """Before, --gpus -8 --micro-batch -1 printed negative speeds, --gpus 0 planned one GPU, --mfu 0 divided
    by zero and a NaN memory gave a plan."""
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "codeparrot-small", *argv])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"codeparrot-plan: error: argument {option}: {says}"), lines


def test_refusal_from_the_installed_command_is_one_line_and_exit_2():
    proc = subprocess.run(
        [str(BIN / "codeparrot-plan"), "--gpus", "-8", "--micro-batch", "-1"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "codeparrot-plan: error: argument --gpus: -8 is not positive: give 1 or more (see --help)\n"
    )


def test_the_plan_of_a_run_config_is_the_layout_training_derives(capsys, tmp_path):
    """The planner calls training's validate(): the batch arithmetic, the precision rule and the refusals
    are training's own, not a copy that could drift."""
    from training.config import load_run_config
    from training.precision import DeviceInfo, decide
    from training.validate import load_ds_config, validate

    def on_a_gpu(requested: str, *_):
        return decide(requested, DeviceInfo(device_type="cuda", name="H100", cuda_bf16=True))

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": {"preset": "codeparrot-small"}, "train": {"micro_batch": 4}}))
    d = cli_json(capsys, "--config", str(config), "--ds_config", "ds_configs/zero2.json", "--gpus", "8")
    run = load_run_config(str(config), [])
    setup = validate(
        run,
        load_ds_config("ds_configs/zero2.json"),
        "ds_configs/zero2.json",
        8,
        "cuda",
        on_a_gpu,
        on_this_host=False,
    )
    lay = d["layout"]
    assert (
        (lay["dp"], lay["grad_accum"], lay["global_batch"])
        == (
            setup.dp_size,
            setup.grad_accum,
            setup.global_batch,
        )
        == (8, 1, 32)
    )  # neither global_batch nor grad_accum in the config: training accumulates once
    chosen = (setup.zero_stage, setup.precision.precision)
    assert (lay["zero_stage"], lay["precision"]) == chosen == (2, "bf16")

    # What training refuses, the planner refuses with training's words.
    code, _, err = cli(capsys, "--config", str(config), "--zero", "2", "--pipeline-stages", "2", "--dp", "4")
    assert code == 2 and "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only" in err, err
    code, _, err = cli(capsys, "--config", str(config), "--global-batch", "30", "--gpus", "8")
    assert code == 2 and "train.global_batch (30) must equal micro_batch (4)" in err, err
