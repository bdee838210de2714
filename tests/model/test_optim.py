"""Parameter groups and the optimizer helper."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from launch.ports import free_port
from model import optim
from model.gpt2 import GPT
from model.presets import get_preset


def test_param_groups_decay_matrices_only_and_count_tied_weight_once() -> None:
    model = GPT(get_preset("tiny"))
    decay, no_decay = optim.param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embed.wte.weight" in decay["names"] and "embed.wpe.weight" in decay["names"]
    assert "blocks.0.attn.c_attn.weight" in decay["names"]
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in no_decay["names"])
    assert "blocks.1.ln_2.weight" in no_decay["names"] and "ln_f.weight" in no_decay["names"]
    grouped = [p for g in (decay, no_decay) for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_cpu_optimizer_is_fused_adamw_without_weight_decay_on_vectors() -> None:
    model = GPT(get_preset("tiny"))
    opt = optim.build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["fused"] is True and not opt.defaults["foreach"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all("names" not in g for g in opt.param_groups)


def test_cuda_request_falls_back_to_torch_adamw_when_fused_adam_is_unavailable(monkeypatch, caplog) -> None:
    calls = []
    monkeypatch.setattr(optim, "_fused_adam", lambda *args: calls.append(args) or None)
    model = GPT(get_preset("tiny"))
    with caplog.at_level(logging.INFO, logger="model.optim"):
        opt = optim.build_optimizer(model, lr=1e-3, device_type="cuda")
    assert calls and type(opt) is torch.optim.AdamW
    assert "torch AdamW" in caplog.text


def test_fused_cpu_adamw_takes_the_steps_foreach_takes() -> None:
    """The fused kernel is a faster form of the same update: over 5 steps on the same gradients (random,
    well above eps: elements whose gradient is rounding noise, like the key bias's, flip sign either way)
    the weights agree with the foreach implementation's to fp32 rounding, and they did move."""
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(64, 32, generator=gen), "b": torch.randn(32, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in start.items()} for _ in range(5)]
    finals = []
    for build in (
        lambda groups: optim.build_optimizer(groups, lr=1e-2),
        lambda groups: torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=True),
    ):
        params = {k: nn.Parameter(v.clone()) for k, v in start.items()}
        opt = build(
            [{"params": [params["w"]], "weight_decay": 0.1}, {"params": [params["b"]], "weight_decay": 0.0}]
        )
        for g in grads:
            for k, p in params.items():
                p.grad = g[k].clone()
            opt.step()
        finals.append(params)
    assert finals[0]["w"].data_ptr() != finals[1]["w"].data_ptr()
    for k in start:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-6, atol=1e-7)
        assert (finals[0][k] - start[k]).abs().mean() > 1e-2


ZERO3_GROUPS = """
import json, sys
import deepspeed
from launch.env import LaunchEnv
from model.gpt2 import GPT
from model.optim import param_groups
from model.presets import get_preset

LaunchEnv.read().init_distributed()
with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_batch_size": 1}):
    model = GPT(get_preset("tiny"))
assert all(p.ndim == 1 for p in model.parameters())  # partitioned: 1-D shards, the shape in ds_shape
print(json.dumps([sorted(g["names"]) for g in param_groups(model, 0.1)]))
"""


def test_param_groups_of_a_zero3_partitioned_model_are_the_plain_models(tmp_path) -> None:
    """Under zero.Init every parameter is a 1-D shard; grouping by its ndim decayed no weight at all (ZeRO-3
    then drifted from the other layouts by 1.3e-5 in 10 steps)."""
    plain = [sorted(g["names"]) for g in optim.param_groups(GPT(get_preset("tiny")), 0.1)]
    env = dict(
        os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", ZERO3_GROUPS], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == plain
    assert len(plain[0]) > 0 and len(plain[1]) > 0


def test_deepspeed_arch_list_drops_architecture_specific_suffixes_only_when_needed() -> None:
    assert optim.deepspeed_arch_list("9.0a") == "9.0"
    assert optim.deepspeed_arch_list("8.0;9.0a+PTX") == "8.0;9.0+PTX"
    assert optim.deepspeed_arch_list("9.0 9.0a 10.0f") == "9.0;10.0"
    assert optim.deepspeed_arch_list("8.6;9.0+PTX") is None  # DeepSpeed parses it: left as it is
    assert optim.deepspeed_arch_list("8.6 9.0") is None
    assert optim.deepspeed_arch_list("Hopper;9.0a") is None  # not fixed by dropping a suffix: left to fail


def test_deepspeed_op_builder_parses_the_arch_list_inside_deepspeed_arch_env(monkeypatch, caplog) -> None:
    """DeepSpeed 0.19.8's own parser (the CUDA FusedAdam builder's, pure Python: no GPU needed) fails on the
    Hopper image's "9.0a" and accepts what deepspeed_arch_env gives it; the user's value is back after."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    def parse() -> str:
        builder = FusedAdamBuilder()
        builder.jit_mode = True  # as in jit_load: the list comes from TORCH_CUDA_ARCH_LIST
        builder.compute_capability_args()
        return os.environ[optim.ARCH_LIST_VAR]

    monkeypatch.setenv(optim.ARCH_LIST_VAR, "9.0a")
    with pytest.raises(ValueError, match="0a"):
        parse()
    monkeypatch.setenv(optim.ARCH_LIST_VAR, "9.0a")
    with caplog.at_level(logging.INFO, logger="model.optim"), optim.deepspeed_arch_env():
        assert parse() == "9.0+PTX"
    assert os.environ[optim.ARCH_LIST_VAR] == "9.0a"
    assert "'9.0a'" in caplog.text and "'9.0'" in caplog.text
    caplog.clear()
    monkeypatch.setenv(optim.ARCH_LIST_VAR, "9.0")
    with caplog.at_level(logging.INFO, logger="model.optim"), optim.deepspeed_arch_env():
        assert os.environ[optim.ARCH_LIST_VAR] == "9.0"
    assert caplog.text == ""
    monkeypatch.delenv(optim.ARCH_LIST_VAR)
    with optim.deepspeed_arch_env():
        assert optim.ARCH_LIST_VAR not in os.environ
