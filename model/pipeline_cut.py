"""Where the pipeline cuts the model, without torch: each pipeline layer's parameters in closed form and
the balanced partition of them that DeepSpeed's ``PipelineModule(partition_method="parameters")`` makes.

The layer list is model/pipeline.py's: the embedding (token and position tables), L blocks, the final
LayerNorm and the head. A tied head is built by ``TiedLayerSpec`` as a second Embedding, and DeepSpeed
counts its parameters again; an untied head is the ``Vp x d`` matrix alone. The partition minimises the
spread (largest stage minus smallest) of the stages' sums by dynamic programming over contiguous cuts;
of equal spreads the cut point found last wins, as DeepSpeed 0.19.8 decides them. model/pipeline.py's
``stage_partition`` and the planner (plan/memory.py) both read it; tests/model/test_pipeline_cut.py
checks it against the modules DeepSpeed builds and against DeepSpeed's own partition function.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from model.config import GPTConfig
from model.flops import block_params


def layer_param_counts(config: GPTConfig) -> list[int]:
    """Parameters of each pipeline layer, as DeepSpeed counts them to cut (the tied head again)."""
    d, vp = config.n_embd, config.padded_vocab_size
    embed = vp * d + config.n_positions * d
    head = embed if config.tie_word_embeddings else vp * d
    return [embed, *[block_params(d)] * config.n_layer, 2 * d, head]


def balanced_cut(weights: Sequence[float], parts: int) -> list[int]:
    """Cut points ``[0, c1, ..., len(weights)]`` of `parts` contiguous stages whose sums are as even as
    can be (the smallest largest-minus-smallest); fewer items than parts: one item per stage, then empty
    stages."""
    n = len(weights)
    if n <= parts:
        return [min(p, n) for p in range(parts + 1)]
    prefix = [0.0, *itertools.accumulate(float(w) for w in weights)]
    # best[i][j]: (spread, largest, smallest, where the last stage starts) of the first i items in j stages
    inf = (math.inf, math.inf, math.inf, 0)
    best = [[inf] * (parts + 1) for _ in range(n + 1)]
    best[0][0] = (0.0, 0.0, math.inf, 0)
    for i in range(1, n + 1):
        for j in range(1, min(i, parts) + 1):
            current = best[i][j]
            for k in range(i):
                stage = prefix[i] - prefix[k]
                largest, smallest = max(best[k][j - 1][1], stage), min(best[k][j - 1][2], stage)
                if largest - smallest <= current[0]:  # "<=": of equal spreads the later start wins
                    current = (largest - smallest, largest, smallest, k)
            best[i][j] = current
    cuts = [n]
    for j in range(parts, 0, -1):
        cuts.append(best[cuts[-1]][j][3])
    return cuts[::-1]


def stage_bounds(config: GPTConfig, stages: int) -> list[tuple[int, int]]:
    """The layer index range ``[start, stop)`` of each pipeline stage."""
    cuts = balanced_cut(layer_param_counts(config), stages)
    return list(itertools.pairwise(cuts))
