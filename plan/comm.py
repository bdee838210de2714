"""codeparrot-plan's communication model: bytes each GPU sends per step, their time, and what compute hides.

What DeepSpeed 0.19.8 sends (read from runtime/engine.py, runtime/zero/stage_1_and_2.py, stage3.py), per
step, with N the parameters of a rank's model (the largest pipeline stage), n the data-parallel size, m the
micro-batches per step (grad_accum), p the parameter bytes and g the bytes of ``communication_data_type``
(default: the training dtype, 2 in bf16, 4 in fp32; the engine casts gradients to it before reducing):

- ZeRO 0: one all-reduce of the gradients after the last micro-batch (engine.buffered_allreduce_fallback).
- ZeRO 1: one all-reduce of the gradients at the accumulation boundary (the hooks reduce only there), then an
  all-gather of the updated p-byte parameter partitions after the step (all_gather_dp_groups).
- ZeRO 2: the gradients are reduced in every micro-batch's backward (partition_gradients). With
  ``reduce_scatter`` and the default ``use_multi_rank_bucket_allreduce`` DeepSpeed all-reduces each bucket
  and keeps its own slice, so the traffic is an all-reduce's, not a reduce-scatter's (a reduce-scatter's
  when that option is false: one reduce per partition owner). Then the same all-gather as ZeRO 1.
- ZeRO 3: per micro-batch, an all-gather of the partitioned parameters in forward and again in backward
  (parameters are released after use; ``stage3_max_reuse_distance`` may keep the last blocks' between
  forward and backward, which this ignores: an upper bound), and a reduce-scatter of the gradients
  (reduce_scatter_coalesced). Parameters of at most ``stage3_param_persistence_threshold`` elements are
  never gathered. No all-gather after the step: each rank updates its partition in place.
- pipeline: each stage sends a [micro, seq, d] activation forward and its gradient backward per
  micro-batch, and with tied embeddings the first and last stage all-reduce the table's gradient per step.

Per GPU, a ring all-reduce of S bytes sends 2 (n-1)/n S and an all-gather or reduce-scatter (n-1)/n S;
time = bytes / (link rate x NCCL_EFFICIENCY). The link: NVLink (or PCIe) within a node, as the GPU table
(training/gpus.py) gives it per direction per GPU; the network, ``--net-gbps`` per GPU, when the group
spans nodes, since a ring runs at its slowest hop. Ranks are numbered as DeepSpeed's PipeDataParallelTopology
does (data parallel fastest), so a stage's data-parallel group fills a node before the next.

Overlap, stated simply: with ``overlap_comm`` the gradient reduction runs on its own stream during the
backward that produces the gradients, so what shows is max(comm - backward, the last bucket's reduction)
(the last bucket is reduced after backward ends). ZeRO-3 prefetches parameters during forward and backward:
exposed max(0, gathers - forward) + max(0, gathers + reduce-scatter - backward) per micro-batch. Without
``overlap_comm`` reductions run on the compute stream and all show. ZeRO-1/2's parameter all-gather after
the step, the pipeline's sends (blocking instructions of its schedule) and ZeRO-0's reduction all show.
Neither latency per collective nor the slow-down of kernels that share the GPU with NCCL is modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from model.config import GPTConfig

if TYPE_CHECKING:
    from plan.memory import Layout

NCCL_EFFICIENCY = 0.7  # of the link rate NCCL's ring collectives sustain on large messages (an assumption)
DEFAULT_NET_GBPS = 400.0  # Gb/s per GPU: one NDR InfiniBand NIC per GPU, as DGX/HGX H100 nodes have
COMM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class CommTerm:
    """One kind of traffic: bytes one GPU sends per step, their time on the link, the part not hidden."""

    name: str
    bytes: int
    time_s: float
    exposed_s: float
    note: str


def dp_spans_nodes(dp: int, stages: int, gpus_per_node: int) -> bool:
    """Whether some stage's data-parallel group (ranks s*dp .. s*dp+dp-1) crosses a node boundary."""
    return any((s * dp) // gpus_per_node != (s * dp + dp - 1) // gpus_per_node for s in range(stages))


def _share(terms: list[tuple[str, int, float, str]], exposed: float) -> list[CommTerm]:
    """Terms overlapped together: their exposed time split in proportion to their time."""
    total = sum(t for _, _, t, _ in terms)
    return [CommTerm(n, b, t, exposed * t / total if total else 0.0, note) for n, b, t, note in terms]


def comm_terms(
    model: GPTConfig,
    lay: Layout,
    N: int,
    *,
    resident: int,
    intra_gb_s: float,
    net_gbps: float,
    forward_s: float,
    backward_s: float,
) -> list[CommTerm]:
    """The traffic of one step for a rank holding N parameters (`resident` of them never gathered by
    ZeRO-3), `forward_s` / `backward_s`: one micro-batch's compute."""
    n, m, z = lay.dp, lay.grad_accum, lay.zero_stage
    p = 2 if lay.precision == "bf16" else 4
    g = COMM_BYTES[lay.communication_data_type or lay.precision]
    multinode = lay.gpus > lay.gpus_per_node
    dp_inter = dp_spans_nodes(n, lay.pipeline_stages, lay.gpus_per_node)
    dp_rate = (net_gbps / 8 if dp_inter else intra_gb_s) * 1e9 * NCCL_EFFICIENCY
    link = "network" if dp_inter else "intra-node"
    out: list[CommTerm] = []
    if n > 1:
        ar, ag = 2 * (n - 1) / n, (n - 1) / n

        def t(nbytes: float) -> float:
            return nbytes / dp_rate

        grad_fac = ar if z < 2 or (z == 2 and lay.multi_rank_bucket_allreduce) else ag
        last_bucket = t(grad_fac * g * min(lay.reduce_bucket_size, N))
        overlapped = lay.overlap and lay.pipeline_stages == 1  # the pipeline reduces after its schedule
        if z <= 2:
            per = 1 if z < 2 else m
            b = int(grad_fac * g * N) * per
            kind = "all-reduce" if grad_fac == ar else "reduce-scatter"
            when = "once per step" if per == 1 else f"every micro-batch (x{m})"
            exposed = t(b)
            if overlapped and z > 0:
                window = backward_s if z == 1 else backward_s * m  # ZeRO 1: the last micro-batch only
                exposed = min(t(b), max(t(b) - window, last_bucket * per))
            out.append(CommTerm(f"gradient {kind}", b, t(b), exposed, f"{when}, {link}"))
            if z >= 1:
                b = int(ag * p * N)
                out.append(CommTerm("parameter all-gather", b, t(b), t(b), f"after the step, {link}"))
        else:
            gathered = max(N - resident, 0)
            fwd, bwd, rs = (int(ag * p * gathered) * m,) * 2 + (int(ag * g * N) * m,)
            out += _share(
                [("parameter all-gather (fwd)", fwd, t(fwd), f"every micro-batch (x{m}), {link}")],
                max(0.0, t(fwd) - forward_s * m),
            )
            if overlapped:
                hidden = max(t(bwd) + t(rs) - backward_s * m, last_bucket * m)
                out += _share(
                    [
                        ("parameter all-gather (bwd)", bwd, t(bwd), f"every micro-batch (x{m}), {link}"),
                        ("gradient reduce-scatter", rs, t(rs), f"every micro-batch (x{m}), {link}"),
                    ],
                    min(hidden, t(bwd) + t(rs)),
                )
            else:
                b_exposed = max(0.0, t(bwd) - backward_s * m)
                out.append(CommTerm("parameter all-gather (bwd)", bwd, t(bwd), b_exposed, f"x{m}, {link}"))
                out.append(
                    CommTerm("gradient reduce-scatter", rs, t(rs), t(rs), f"x{m}, on the compute stream")
                )
    if lay.pipeline_stages > 1:
        rate = (net_gbps / 8 if multinode else intra_gb_s) * 1e9 * NCCL_EFFICIENCY
        where = "network" if multinode else "intra-node"
        act = p * lay.micro_batch * lay.seq_len * model.n_embd
        b = 2 * m * act
        note = f"[micro, seq, d] forward + gradient back, x{m}, {where}"
        out.append(CommTerm("pipeline activations", b, b / rate, b / rate, note))
        if model.tie_word_embeddings:
            b = g * model.padded_vocab_size * model.n_embd  # all-reduce over 2 ranks: 2 (2-1)/2 = 1
            out.append(
                CommTerm("tied embedding all-reduce", b, b / rate, b / rate, f"first + last stage, {where}")
            )
    return out
