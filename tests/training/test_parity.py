"""ZeRO-2, ZeRO-3 and pipeline + ZeRO-1 on 2 CPU ranks give the single-process losses (fp32, 10 steps)."""

from __future__ import annotations

import pytest

from .conftest import check, deepspeed_cmd, losses, run, run_config, single_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single_process_losses(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    # One rank accumulating 2 micro-batches sees the same global batch as 2 ranks with one each.
    check(run(single_cmd(run_config(tmp, tiny_data, grad_accum=2), "zero2_cpu.json"), tmp))
    return losses(tmp / "ckpt")


@pytest.mark.parametrize(
    ("ds_config", "train"),
    [
        ("zero2_cpu.json", {}),
        ("zero3_cpu.json", {}),
        ("pipeline_zero1_cpu.json", {"pipeline_stages": 2, "grad_accum": 2}),
    ],
    ids=["zero2", "zero3", "pipeline_zero1"],
)
def test_losses_equal_single_process(tiny_data, tmp_path, single_process_losses, ds_config, train):
    result = check(run(deepspeed_cmd(run_config(tmp_path, tiny_data, **train), ds_config), tmp_path))
    ours = losses(tmp_path / "ckpt")
    if ds_config == "zero3_cpu.json":  # never whole on one rank: each holds about half
        line = next(x for x in result.stdout.splitlines() if "built under zero.Init" in x)
        local, total = (int(w) for w in line.split("zero.Init, ")[1].split(" parameters")[0].split(" of "))
        assert local <= total // 2 + 64
    assert sorted(ours) == list(range(1, 11))
    # fp32: the losses agree to the last bit or two of the float32 they are logged as. Measured over seeds
    # 1, 2, 3, 7 and 1234 (deepspeed 0.19.8, torch 2.13.0, 2 CPU ranks, AMD EPYC), the largest relative
    # difference over the 10 steps: ZeRO-2 1.55e-7, pipeline + ZeRO-1 1.52e-7, ZeRO-3 1.53e-7.
    # The tolerance is about 6 times the largest. (When the optimizer's groups took ZeRO-3's 1-D shards
    # for vectors, no weight was decayed and ZeRO-3 drifted to 1.3e-5 by step 9: model/optim.py.)
    tolerance = 1e-6
    for step, reference in single_process_losses.items():
        assert abs(ours[step] - reference) <= tolerance * abs(reference), (step, ours, single_process_losses)
    assert ours[10] < ours[1]  # and it learns
