"""Named model sizes: ``tiny`` for tests, ``codeparrot-small`` (111M) and ``codeparrot`` (1.5B).

The CodeParrot sizes follow the original codeparrot/codeparrot(-small) models: GPT-2 small and GPT-2 XL shapes
with a 32768-token code tokenizer and a 1024-token context.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from model.config import GPTConfig

PRESETS: MappingProxyType[str, GPTConfig] = MappingProxyType(
    {
        # 2 blocks of width 64: builds and steps in milliseconds on a CPU.
        "tiny": GPTConfig(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4),
        # GPT-2 small shape: 111,008,256 parameters with the tied head.
        "codeparrot-small": GPTConfig(vocab_size=32768, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        # GPT-2 XL shape: 1,529,628,800 parameters with the tied head.
        "codeparrot": GPTConfig(vocab_size=32768, n_positions=1024, n_embd=1600, n_layer=48, n_head=25),
    }
)


def get_preset(name: str, **overrides: Any) -> GPTConfig:
    """The preset ``name`` with ``overrides`` applied, e.g. ``get_preset("tiny", vocab_size=1000)``.

    Raises:
        ValueError: for an unknown preset (listing the available ones) or invalid overrides.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)
