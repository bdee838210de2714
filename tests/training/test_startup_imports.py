"""training.engine.defer_deepspeed_muon_compile: DeepSpeed's Muon module imported without torch's inductor,
its kernels compiled on first call, DeepSpeed's compile helper restored."""

from __future__ import annotations

import subprocess
import sys

import torch

from training import engine

from .conftest import ROOT

CHECK = """
import sys
import deepspeed
from deepspeed.runtime import compiler
from training import engine
before = compiler.compile
engine.defer_deepspeed_muon_compile()
assert engine.DEEPSPEED_MUON in sys.modules
assert "torch._inductor.compile_fx" not in sys.modules, "inductor was imported"
assert compiler.compile is before
from deepspeed.runtime.zero.muon.original_muon import muon_update
assert muon_update.__wrapped__ is not None
from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
engine.defer_deepspeed_muon_compile()  # again: nothing to do
print("ok")
"""


def test_deepspeed_muon_imports_without_inductor() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_kernels_compile_on_first_call_once(monkeypatch) -> None:
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return lambda *a, **k: ("compiled", fn(*a, **k))

    monkeypatch.setattr(torch, "compile", fake_compile)
    kernel = engine._compile_on_first_call(lambda x, y=1: x + y)
    assert compiled == []  # nothing at decoration
    assert kernel(1, y=2) == ("compiled", 3)
    assert kernel(2) == ("compiled", 3)
    assert len(compiled) == 1
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert kernel(5) == 6  # inside a compiled caller: traced as plain code
