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
    # fp32: only the order of the gradient reductions differs, and Adam amplifies that rounding over the
    # steps. Measured over seeds 1-3 and 1234: ZeRO-2 and pipeline stay below 1e-5 relative; ZeRO-3, whose
    # reduce-scatter sums in yet another order, reaches 0.8-1.3e-5 by step 10.
    tolerance = 3e-5 if ds_config == "zero3_cpu.json" else 1e-5
    for step, reference in single_process_losses.items():
        assert abs(ours[step] - reference) <= tolerance * abs(reference), (step, ours, single_process_losses)
    assert ours[10] < ours[1]  # and it learns
