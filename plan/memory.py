"""codeparrot-plan: per-GPU memory and speed of a training layout, predicted before launch.

    codeparrot-plan --config configs/codeparrot_zero2.json --ds_config ds_configs/zero2.json --gpus 32 \\
        --gpu h100-sxm
    codeparrot-plan --preset codeparrot-small --gpu h200 --micro-batch 16 --zero 0 --json
    codeparrot-plan --preset codeparrot --suggest --nodes 4 --gpus-per-node 8 --gpu h100-sxm

Memory is what DeepSpeed 0.19.8 allocates per rank (read from its ZeRO code; model-state terms checked
against the storages live on CPU ranks after a step, tests/training/test_planner.py), in three phases:
``state`` (lives across steps: parameters, fp32 master weights, Adam moments, ZeRO-3's resident buffers),
``backward`` (during forward and backward: gradients, reduction buckets, activations, the loss, gathered
ZeRO-3 parameters) and ``step`` (the optimizer step's fp32 gradient copies). The peak is the state plus the
larger of the two others. Per ZeRO stage, with p the parameter bytes (2 bf16, 4 fp32), N the parameters
of the rank's model (or pipeline stage) and dp the data-parallel size:

- stage 0: p N params, p N grads; bf16 adds a 4 N fp32 master copy (FP16_Optimizer wrapper; with a
  pipeline BF16_Optimizer, which also keeps 4 N fp32 gradient accumulators). Adam: 8 N.
- stage 1/2: p N params (flat buffer), a 4 N / dp fp32 partition copy even in fp32 training
  (``single_partition_of_fp32_groups``: ``.clone().float()``), 8 N / dp moments. Stage 1 holds the full
  p N grads until the reduction; stage 2 a p N / dp partition plus ``reduce_bucket_size`` buckets (two with
  ``overlap_comm``), released after backward.
- stage 3: p N / dp params, a 4 N / dp fp32 master copy (also in fp32 training: the branch of stage3.py
  that would reuse the partition is not taken, as measured), 8 N / dp moments, a resident p N / dp
  gradient partition and one resident ``reduce_bucket_size`` bucket; parameters of at most
  ``stage3_param_persistence_threshold`` elements stay whole; during forward/backward the gathered module
  plus ``stage3_prefetch_bucket_size`` (capped by ``stage3_max_live_parameters``).
- offload optimizer: master and moments in host memory; offload all (ZeRO-3): the parameter partition too.

Activations per block and micro-batch (model/gpt2.py with flash attention, which keeps no T x T matrix):
16 B T d values in the activation dtype (ln_1 input and output, q/k/v, the attention output, which flash
attention lays out [B, T, H, hd] so that merging the heads is a view, ln_2 input and output, the 4d MLP
pre-activation and GELU output), two B T d dropout masks of one byte (CUDA keeps bool masks) when
resid_pdrop > 0, fp32 LayerNorm statistics 16 B T bytes and the attention log-sum-exp 4 B H T bytes.
With activation checkpointing a block keeps only its input, and backward recomputes one block at a time.
The chunked loss (model/kernels/cross_entropy.py) keeps the head's gradients, B T d and Vp d values, and
needs its chunk buffers and fp32 weight gradient while it runs.

Speed: ``--mfu`` is the MFU a layout without recomputation or pipeline bubble reaches, i.e. the fraction of
the GPU's dense peak sustained on the FLOPs actually executed; a layout that recomputes or idles reaches less.
Executed FLOPs per token are model.flops.flops_per_token plus, with checkpointing, the blocks' forward
again; a pipeline idles for the bubble (p-1)/(m+p-1) of a step with m micro-batches. The step adds the
communication that compute does not hide (plan/comm.py: bytes per collective, link rates from the
GPU table and ``--net-gbps``, overlap with ``overlap_comm``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from model.config import GPTConfig
from model.flops import block_params, flops_per_token, param_count
from model.pipeline_cut import stage_bounds
from plan.comm import DEFAULT_NET_GBPS, CommTerm, comm_terms
from training.gpus import GPUS

GIB = 2**30
DEFAULT_MFU = 0.45  # the stated MFU when none is given: a layout without recompute or bubble
SAFETY_FRACTION = 0.10  # of GPU memory kept free for the CUDA context, fragmentation and NCCL buffers
DEFAULT_GLOBAL_BATCH = 512  # sequences, as the shipped 1.5B configs
Phase = Literal["state", "backward", "step"]
# How the report and the drawing title each phase.
PHASE_TITLES: dict[str, str] = {
    "state": "kept across steps",
    "backward": "forward/backward",
    "step": "optimizer step",
}
Offload = Literal["none", "optimizer", "all"]


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How a run is laid out on the GPUs; DeepSpeed's defaults for what a ds_config leaves out."""

    seq_len: int
    micro_batch: int
    grad_accum: int
    dp: int = 1
    pipeline_stages: int = 1
    zero_stage: int = 0
    offload: Offload = "none"
    activation_checkpointing: bool = False
    precision: Literal["bf16", "fp32"] = "bf16"
    reduce_bucket_size: int = 500_000_000
    overlap_comm: bool | None = None  # None: DeepSpeed's default, True for stage 3 only
    contiguous_gradients: bool = True
    prefetch_bucket_size: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    param_persistence_threshold: int = 100_000
    communication_data_type: Literal["bf16", "fp16", "fp32"] | None = None  # None: the training dtype
    multi_rank_bucket_allreduce: bool = True  # ZeRO 1/2 reduce buckets with all-reduce (DeepSpeed default)
    gpus_per_node: int = 8

    @property
    def gpus(self) -> int:
        return self.dp * self.pipeline_stages

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def overlap(self) -> bool:
        return self.zero_stage == 3 if self.overlap_comm is None else self.overlap_comm

    def problems(self, model: GPTConfig, source: str = "--zero") -> list[str]:
        """What DeepSpeed or the model would refuse, each with the values and a way out."""
        from training.validate import PIPELINE_ZERO_MSG

        out = []
        p, z = self.pipeline_stages, self.zero_stage
        if p > 1 and z >= 2:
            out.append(PIPELINE_ZERO_MSG.format(stages=p, path=source, zero_stage=z))
        if p > model.n_layer:
            out.append(f"pipeline stages ({p}) exceed n_layer ({model.n_layer}): each stage needs a block")
        if self.seq_len > model.n_positions:
            out.append(
                f"seq_len ({self.seq_len}) exceeds the model's context n_positions ({model.n_positions})"
            )
        if self.offload != "none" and z == 0:
            out.append(f"--offload {self.offload} needs ZeRO stage 1 or more (DeepSpeed's offload_optimizer)")
        if self.offload == "all" and z != 3:
            out.append(f"--offload all offloads parameters, which only ZeRO stage 3 does (got stage {z})")
        return out


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    phase: Phase
    note: str
    device: Literal["gpu", "cpu"] = "gpu"


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    peak_tflops: float
    intra_node_gb_s: float = 64.0  # GB/s per direction per GPU within a node; PCIe Gen5 x16 if not known


def gpu_from_table(key: str, precision: str) -> Gpu:
    if key not in GPUS:
        raise ValueError(
            f"unknown --gpu {key!r}; known: {', '.join(GPUS)} (or --gpu-memory-gib/--gpu-tflops)"
        )
    spec = GPUS[key]
    return Gpu(key, spec.memory_gib, spec.peak_tflops(precision), spec.intra_node_gb_s)


# ---- parameters per pipeline stage -----------------------------------------------------------------


@functools.cache
def _stage_bounds(model: GPTConfig, stages: int) -> tuple[tuple[int, int], ...]:
    return tuple(stage_bounds(model, stages))


def stage_params(model: GPTConfig, stages: int) -> list[int]:
    """Parameters held by each pipeline stage (one stage: the whole model). With a tied head the last stage
    holds its own copy of the token and position tables (DeepSpeed's TiedLayerSpec builds the module)."""
    if stages == 1:
        return [param_count(model)]
    d, Vp = model.n_embd, model.padded_vocab_size
    embed = Vp * d + model.n_positions * d
    layers = [
        embed,
        *[block_params(d)] * model.n_layer,
        2 * d,
        embed if model.tie_word_embeddings else Vp * d,
    ]
    return [sum(layers[a:b]) for a, b in _stage_bounds(model, stages)]


# ---- activations -----------------------------------------------------------------------------------


def block_activation_bytes(model: GPTConfig, B: int, T: int, act_bytes: int, mask_bytes: int = 1) -> int:
    """Bytes one block saves for backward per micro-batch (module docstring; no checkpointing)."""
    d, H = model.n_embd, model.n_head
    masks = 2 * B * T * d * mask_bytes if model.resid_pdrop > 0 else 0
    philox = 24 if model.attn_pdrop > 0 else 0  # flash attention's dropout seed and offset
    return 16 * B * T * d * act_bytes + masks + 16 * B * T + 4 * B * H * T + philox


def loss_terms(model: GPTConfig, B: int, T: int, pb: int, last_stage_logits: bool) -> list[Term]:
    """The head and loss: chunked in the plain model, materialised logits on a pipeline's last stage."""
    from model.kernels.loss_chunks import default_chunk_rows, default_group_rows

    d, V, Vp, N = model.n_embd, model.vocab_size, model.padded_vocab_size, B * T
    ln_f = N * d * pb + 8 * N
    if last_stage_logits or model.cross_entropy == "torch":
        return [
            Term("ln_f + logits", ln_f + N * V * (pb + 4), "backward", "logits and fp32 log-probs [B,T,V]"),
            Term("loss transient", N * V * 4, "backward", "fp32 upcast of the logits"),
        ]
    c = min(default_chunk_rows(V, "cuda"), N)
    g = max(c, min(default_group_rows(V, c, pb, "cuda"), N))  # low-precision logits/gradient rows
    saved = ln_f + N * d * pb + Vp * d * pb
    buffers = g * V * pb + c * V * 4  # logits and softmax gradients; one chunk's fp32 log-probs
    transient = buffers + V * d * 4 + (V * d * pb if pb != 4 else 0) + N * d * pb + Vp * d * (4 + pb)
    how = f"{g}-row logits and {c}-row fp32 buffers, fp32 weight gradient"
    return [
        Term("ln_f + chunked loss", saved, "backward", "head gradients kept for backward: [B*T,d] + [Vp,d]"),
        Term("loss transient", transient, "backward", how),
    ]


def activation_terms(model: GPTConfig, lay: Layout, layers: int, in_flight: int, first: bool, last: bool):
    B, T, d = lay.micro_batch, lay.seq_len, model.n_embd
    pb = 2 if lay.precision == "bf16" else 4
    full = block_activation_bytes(model, B, T, pb)
    per_block = B * T * d * pb if lay.activation_checkpointing else full
    how = "block inputs only (checkpointing)" if lay.activation_checkpointing else "flash attention, no T x T"
    terms = [
        Term(
            "activations",
            layers * per_block * in_flight,
            "backward",
            f"{layers} blocks x {in_flight} micro-batch(es) x {per_block / 2**20:.1f} MiB, {how}",
        )
    ]
    if lay.activation_checkpointing and layers:
        terms.append(Term("recomputed block", full, "backward", "one block's activations during backward"))
    if first and model.embd_pdrop > 0:
        terms.append(Term("embedding dropout", B * T * d * in_flight, "backward", "bool mask"))
    if last:
        terms += loss_terms(model, B, T, pb, last_stage_logits=lay.pipeline_stages > 1)
    if lay.pipeline_stages > 1:
        buffers = max(2, in_flight)
        terms.append(
            Term(
                "pipeline buffers",
                buffers * 2 * B * T * d * pb,
                "backward",
                f"{buffers} in/out activation buffers",
            )
        )
    return terms


# ---- model states ------------------------------------------------------------------------------------


def zero3_resident_params(model: GPTConfig, threshold: int) -> int:
    """Elements of the parameters ZeRO-3 keeps whole on every rank (at most `threshold` elements each)."""
    d, L = model.n_embd, model.n_layer
    sizes = [3 * d, d, 4 * d, d] + [d] * 4  # a block's biases and LayerNorm weights and biases
    return sum(s for s in sizes if s <= threshold) * L + (2 * d if d <= threshold else 0)


def model_state_terms(model: GPTConfig, lay: Layout, N: int) -> list[Term]:
    """Parameters, gradients, optimizer states and DeepSpeed buffers of one rank holding N parameters."""
    z, dp, pb = lay.zero_stage, lay.dp, 2 if lay.precision == "bf16" else 4
    bf16 = lay.precision == "bf16"
    opt_dev = "cpu" if lay.offload != "none" else "gpu"
    part = -(-N // dp) if z >= 1 else N
    t = []
    if z < 3:
        t.append(Term("parameters", pb * N, "state", "whole on every rank"))
    else:
        dev = "cpu" if lay.offload == "all" else "gpu"
        t.append(Term("parameters", pb * part, "state", f"1/{dp} partition", dev))
        whole = zero3_resident_params(model, lay.param_persistence_threshold)
        t.append(Term("persistent parameters", pb * whole, "state", "small params kept whole"))
        live = min(lay.max_live_parameters, lay.prefetch_bucket_size + model.padded_vocab_size * model.n_embd)
        t.append(Term("gathered parameters", pb * min(live, N), "backward", "module in use + prefetch"))
    master = 4 * part if bf16 or z >= 1 else 0  # ZeRO keeps an fp32 partition copy even in fp32
    if master:
        t.append(Term("fp32 master weights", master, "state", "fp32 copy of the partition", opt_dev))
    t.append(Term("Adam moments", 8 * part, "state", "exp_avg + exp_avg_sq, fp32", opt_dev))
    if z == 0 and bf16 and lay.pipeline_stages > 1:
        t.append(Term("fp32 grad accumulators", 4 * N, "state", "BF16_Optimizer's flat fp32 gradients"))
    bucket = pb * lay.reduce_bucket_size
    if z <= 1:
        t.append(Term("gradients", pb * N, "backward", "whole until reduced"))
        t.append(Term("gradients (step)", pb * N, "step", "held into the step"))
        if z == 0:
            flat = 4 * N if bf16 else pb * min(N, 500_000_000)
            t.append(Term("step flat gradients", flat, "step", "fp32 flat copy / all-reduce buffer"))
        else:
            t.append(Term("reduce bucket", min(bucket, pb * N), "backward", "reduce_bucket_size"))
            t.append(Term("fp32 grad partition", 4 * part + pb * part, "step", "flat + fp32 copy"))
    elif z == 2:
        n_buckets = 2 if lay.overlap else 1
        if lay.offload == "none":
            t.append(Term("gradient partition", pb * part, "backward", f"1/{dp} of the gradients"))
            t.append(Term("gradient partition (step)", pb * part + 4 * part, "step", "+ fp32 copy"))
        else:
            t.append(
                Term(
                    "offload grad buffer",
                    pb * model.padded_vocab_size * model.n_embd,
                    "backward",
                    "largest parameter's gradient",
                )
            )
        if lay.contiguous_gradients:
            t.append(
                Term("reduce buckets", n_buckets * bucket, "backward", f"{n_buckets} x reduce_bucket_size")
            )
    else:
        grad_dev = "cpu" if lay.offload != "none" else "gpu"
        t.append(Term("gradient partition", pb * part, "state", "flat gradient buffer, resident", grad_dev))
        if lay.contiguous_gradients:
            t.append(Term("reduce bucket", bucket, "state", "reduce_bucket_size, resident"))
        if lay.offload == "none":
            t.append(Term("fp32 grad buffer", 4 * part, "step", "flat fp32 gradients for the step"))
    return [x for x in t if x.bytes]


# ---- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Prediction for one layout: the worst (largest) rank's memory terms and the run's speed."""

    model: GPTConfig
    preset: str
    layout: Layout
    gpu: Gpu
    mfu: float
    tokens: float | None
    terms: list[Term]
    stage: int  # the pipeline stage whose rank needs the most memory
    net_gbps: float = DEFAULT_NET_GBPS  # inter-node bandwidth per GPU, Gb/s

    @property
    def parameters(self) -> int:
        return param_count(self.model)

    def total(self, phase: Phase | None = None, device: str = "gpu") -> int:
        return sum(t.bytes for t in self.terms if t.device == device and (phase is None or t.phase == phase))

    @property
    def resident_bytes(self) -> int:
        """GPU bytes that live across steps (what remains after an optimizer step)."""
        return self.total("state")

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + max(self.total("backward"), self.total("step"))

    @property
    def usable_bytes(self) -> int:
        return int(self.gpu.memory_gib * GIB * (1 - SAFETY_FRACTION))

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    # speed
    @property
    def executed_flops_per_token(self) -> int:
        """Model FLOPs plus, with activation checkpointing, the blocks' forward again
        (2 N_blocks + 4 L d T)."""
        m, T = self.model, self.layout.seq_len
        f = flops_per_token(m, T)
        if self.layout.activation_checkpointing:
            f += 2 * m.n_layer * block_params(m.n_embd) + 4 * m.n_layer * m.n_embd * T
        return f

    @property
    def bubble(self) -> float:
        p, m = self.layout.pipeline_stages, self.layout.grad_accum
        return (p - 1) / (m + p - 1)

    @property
    def compute_time_s(self) -> float:
        """A step's compute at the stated MFU, the pipeline bubble included."""
        lay = self.layout
        flops = lay.global_batch * lay.seq_len * self.executed_flops_per_token
        return flops / (lay.gpus * self.gpu.peak_tflops * 1e12 * self.mfu) / (1 - self.bubble)

    @functools.cached_property
    def comm(self) -> list[CommTerm]:
        """Communication per GPU per step (plan/comm.py), for the stage with the most parameters."""
        m, lay = self.model, self.layout
        rate = lay.pipeline_stages * self.gpu.peak_tflops * 1e12 * self.mfu
        tokens = lay.micro_batch * lay.seq_len
        forward = tokens * flops_per_token(m, lay.seq_len) / 3 / rate  # 2 N + 4 L d T of 6 N + 12 L d T
        return comm_terms(
            m,
            lay,
            max(stage_params(m, lay.pipeline_stages)),
            resident=zero3_resident_params(m, lay.param_persistence_threshold),
            intra_gb_s=self.gpu.intra_node_gb_s,
            net_gbps=self.net_gbps,
            forward_s=forward,
            backward_s=tokens * self.executed_flops_per_token / rate - forward,
        )

    @property
    def exposed_comm_s(self) -> float:
        return sum(t.exposed_s for t in self.comm)

    @property
    def step_time_s(self) -> float:
        """Compute plus the communication it does not hide."""
        return self.compute_time_s + self.exposed_comm_s

    @property
    def tokens_per_s(self) -> float:
        return self.layout.global_batch * self.layout.seq_len / self.step_time_s


def plan(
    model: GPTConfig,
    lay: Layout,
    gpu: Gpu,
    *,
    mfu: float = DEFAULT_MFU,
    tokens: float | None = None,
    preset: str = "custom",
    source: str = "--zero",
    net_gbps: float = DEFAULT_NET_GBPS,
) -> Plan:
    """The prediction for `lay`; raises ValueError listing what DeepSpeed or the model would refuse."""
    problems = lay.problems(model, source)
    if problems:
        raise ValueError("impossible layout:\n  - " + "\n  - ".join(problems))
    p, worst = lay.pipeline_stages, None
    counts = stage_params(model, p)
    if p > 1:
        blocks = [max(0, min(b, model.n_layer + 1) - max(a, 1)) for a, b in _stage_bounds(model, p)]
    else:
        blocks = [model.n_layer]
    make = functools.partial(
        Plan, model=model, preset=preset, layout=lay, gpu=gpu, mfu=mfu, tokens=tokens, net_gbps=net_gbps
    )
    for s in range(p):
        in_flight = min(p - s, lay.grad_accum)
        terms = model_state_terms(model, lay, counts[s]) + activation_terms(
            model, lay, blocks[s], in_flight, first=s == 0, last=s == p - 1
        )
        candidate = make(terms=terms, stage=s)
        if worst is None or candidate.peak_bytes > worst.peak_bytes:
            worst = candidate
    assert worst is not None
    return worst
