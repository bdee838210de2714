"""train.precision auto: the rule fed with the figures of each CPU kind and GPU (no timing inside tests),
and the demo config resolving on this machine to a precision it runs natively."""

from __future__ import annotations

import json

import pytest

from training.config import ConfigError, from_dict
from training.precision import DeviceInfo, MatmulFigures, cpu_model_and_flags, decide, probe_shape
from training.run_files import RUN_CONFIG
from training.validate import load_ds_config, validate

from .conftest import ROOT, check, losses, run, run_config, single_cmd


def cpu(name: str, flags: tuple[str, ...], fp32: float, bf16: float) -> DeviceInfo:
    figures = MatmulFigures(shape=(256, 128, 512), fp32_gflops=fp32, bf16_gflops=bf16, threads=1)
    return DeviceInfo(device_type="cpu", name=name, cpu_flags=flags, figures=figures)


# Figures of the kind each CPU gives on the model's matmul with one thread (torch 2.13).
SAPPHIRE_RAPIDS = cpu("Intel Xeon Platinum 8480+", ("amx_bf16", "avx512_bf16"), fp32=95.0, bf16=610.0)
ZEN4 = cpu("AMD EPYC 9R14", ("avx512_bf16",), fp32=60.0, bf16=130.0)
ZEN3 = cpu("AMD EPYC 7R13", (), fp32=19.0, bf16=0.1)


@pytest.mark.parametrize(("info", "expected"), [(SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"), (ZEN3, "fp32")])
def test_auto_on_each_cpu_kind(info, expected):
    choice = decide("auto", info)
    assert choice.precision == expected and choice.warning is None
    # The log line names the CPU, its flags and the measured figures.
    assert info.name in choice.reason and f"fp32 {info.figures.fp32_gflops:.1f} GFLOP/s" in choice.reason
    if expected == "fp32":
        assert "none of amx_bf16, avx512_bf16" in choice.reason and "emulated" in choice.reason


def test_bf16_barely_faster_stays_fp32():
    assert decide("auto", cpu("x", ("avx512_bf16",), fp32=50.0, bf16=55.0)).precision == "fp32"


def test_explicit_bf16_is_honoured_but_warned_where_slow():
    slow = decide("bf16", ZEN3)
    assert slow.precision == "bf16"
    assert "bf16 runs 190x slower than fp32 on AMD EPYC 7R13" in slow.warning
    assert "set train.precision=auto (or fp32)" in slow.warning
    assert decide("bf16", ZEN4).warning is None and decide("fp32", ZEN3).precision == "fp32"


def test_auto_on_gpus():
    h100 = DeviceInfo(device_type="cuda", name="NVIDIA H100 80GB HBM3", cuda_bf16=True)
    v100 = DeviceInfo(device_type="cuda", name="Tesla V100-SXM2-16GB", cuda_bf16=False)
    assert decide("auto", h100).precision == "bf16" and "H100" in decide("auto", h100).reason
    assert decide("auto", v100).precision == "fp32"


def test_probe_uses_the_models_matmul_clipped():
    assert probe_shape(128, 8 * 256) == (256, 128, 512)
    assert probe_shape(1600, 8 * 1024) == (256, 256, 512)
    assert probe_shape(64, 32) == (32, 64, 256)


def test_demo_config_resolves_to_a_native_precision_here(tiny_data):
    cfg = json.loads((ROOT / "configs" / "demo.json").read_text())
    assert cfg["train"].get("precision", "auto") == "auto"
    cfg["data"]["paths"] = [str(tiny_data)]
    run = from_dict(cfg)
    ds_path = str(ROOT / "ds_configs" / "zero2_cpu.json")
    choice = validate(run, load_ds_config(ds_path), ds_path, 2, "cpu").precision
    _, flags = cpu_model_and_flags()
    assert choice.requested == "auto" and "GFLOP/s" in choice.reason
    assert choice.precision in ("fp32", "bf16")
    if not flags:  # no bf16 instructions: bf16 is emulated here, so auto must not take it
        assert choice.precision == "fp32", choice.reason


def test_the_json_decides_auto_and_contradictions_are_refused(tiny_data):
    run = from_dict({"data": {"paths": [str(tiny_data)], "seq_len": 32}})
    resolved = validate(run, {"bf16": {"enabled": True}}, "gpu.json", 1, "cpu")
    assert resolved.precision.precision == "bf16" and resolved.ds_config["bf16"]["enabled"] is True
    assert "gpu.json sets bf16.enabled true" in resolved.precision.reason
    run = from_dict({"data": {"paths": [str(tiny_data)], "seq_len": 32}, "train": {"precision": "fp32"}})
    with pytest.raises(ConfigError, match="sets bf16.enabled=True but train.precision is 'fp32'"):
        validate(run, {"bf16": {"enabled": True}}, "gpu.json", 1, "cpu")


@pytest.mark.parametrize("trained_in", ["fp32", "bf16"])
def test_auto_resumes_a_checkpoint_in_its_own_precision(tiny_data, tmp_path, trained_in):
    """"auto" chooses once per run: a checkpoint trained in fp32 and one trained in bf16 both resume under
    auto, each in its own precision. Whatever auto measures on this machine, one of the two differs from it,
    and a resume that took the measured precision would be refused for train.precision (or, on a machine at
    the 1.25x margin, would be refused at random)."""
    cfg = run_config(tmp_path, tiny_data, precision=trained_in, max_steps=4, save_interval=4, eval_interval=4)
    check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    cfg = run_config(tmp_path, tiny_data, precision="auto", max_steps=6, save_interval=6, eval_interval=6)
    log = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path)).stdout
    assert f"precision {trained_in} (train.precision auto)" in log, log[-3000:]
    resolved = json.loads((tmp_path / "ckpt" / RUN_CONFIG).read_text())["resolved"]
    assert resolved["precision"] == trained_in
    assert sorted(losses(tmp_path / "ckpt")) == [1, 2, 3, 4, 5, 6]
    saved = json.loads((tmp_path / "ckpt" / "global_step6" / "client_state.json").read_text())
    assert saved["resume_config"]["train.precision"] == trained_in
