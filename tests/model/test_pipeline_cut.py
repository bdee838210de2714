"""model/pipeline_cut.py, torch-free, against what DeepSpeed does: each layer's parameters against the
modules its PipelineModule builds (on the meta device), and the cut against its own partition function."""

from __future__ import annotations

import random

import pytest
import torch
from deepspeed.runtime.utils import partition_balanced

from model.config import GPTConfig
from model.pipeline import pipeline_layers
from model.pipeline_cut import balanced_cut, layer_param_counts, stage_bounds
from model.presets import get_preset

CONFIGS = {
    "tiny": get_preset("tiny", vocab_size=509),
    "tiny-untied": get_preset("tiny", vocab_size=509, tie_word_embeddings=False),
    "codeparrot-small": get_preset("codeparrot-small"),
    "codeparrot": get_preset("codeparrot"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_counts_are_those_of_the_modules_deepspeed_builds(name):
    config: GPTConfig = CONFIGS[name]
    with torch.device("meta"):
        built = [
            sum(p.numel() for p in spec.build(log=False).parameters()) for spec in pipeline_layers(config)
        ]
    assert layer_param_counts(config) == built


def test_the_cut_is_deepspeeds_on_random_and_tied_weights():
    rng = random.Random(0)
    cases = [([5] * 7, 3), ([1, 1, 1, 1], 4), ([3], 2), ([], 1)]
    for _ in range(300):
        n, parts = rng.randint(1, 24), rng.randint(1, 8)
        cases.append(([rng.choice([1, 2, 3, 10, 100]) for _ in range(n)], parts))  # many ties
        cases.append(([rng.randint(1, 10**6) for _ in range(n)], parts))
    for weights, parts in cases:
        assert balanced_cut(weights, parts) == [int(x) for x in partition_balanced(weights, parts)], (
            weights,
            parts,
        )


@pytest.mark.parametrize("name", CONFIGS)
def test_stage_bounds_of_the_presets_are_deepspeeds(name):
    config = CONFIGS[name]
    for stages in range(1, 9):
        expected = partition_balanced(weights=layer_param_counts(config), num_parts=stages)
        bounds = stage_bounds(config, stages)
        assert [bounds[0][0], *(b for _, b in bounds)] == [int(x) for x in expected]
