"""GPTConfig: the one typed, validated description of a GPT-2 model.

Importable without torch: launchers, the data tools and config checks read it without paying for a torch
import. Validation collects every problem and raises one ValueError that quotes the offending values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

AttentionImpl = Literal["auto", "sdpa", "torch"]
LayerNormImpl = Literal["auto", "triton", "torch"]
BiasGeluImpl = Literal["auto", "triton", "torch"]
CrossEntropyImpl = Literal["auto", "chunked", "torch"]

# Allowed values of each kernel-choice field, read from the Literal types above so the two never disagree.
KERNEL_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": get_args(AttentionImpl),
    "layernorm": get_args(LayerNormImpl),
    "bias_gelu": get_args(BiasGeluImpl),
    "cross_entropy": get_args(CrossEntropyImpl),
}

_POSITIVE_INTS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "pad_vocab_to_multiple")
_DROPOUTS = ("embd_pdrop", "attn_pdrop", "resid_pdrop")
_BOOLS = ("tie_word_embeddings", "activation_checkpointing")


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Shape, regularisation and kernel choices of a GPT-2 model.

    Shapes: ``vocab_size`` V tokens (the tokenizer's size; the embedding table is padded to
    ``padded_vocab_size`` rows), context ``n_positions`` T, width ``n_embd`` d, ``n_layer`` blocks of
    ``n_head`` heads of size d / n_head. The MLP is 4d wide, as in GPT-2.

    Kernel fields pick an implementation per op; "auto" takes the fastest one available on the tensors'
    device and logs the choice once (see ``model/kernels``). The choice never changes the state_dict.
    """

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    activation_checkpointing: bool = False
    attention: AttentionImpl = "auto"
    layernorm: LayerNormImpl = "auto"
    bias_gelu: BiasGeluImpl = "auto"
    cross_entropy: CrossEntropyImpl = "auto"
    pad_vocab_to_multiple: int = 64

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid GPTConfig:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> list[str]:
        """Every inconsistency of this config, each as a sentence quoting the values."""
        problems: list[str] = []
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} ({value!r}) must be an int")
            elif value < 1:
                problems.append(f"{name} ({value}) must be >= 1")
        for name in _DROPOUTS:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                problems.append(f"{name} ({value!r}) must be a number in [0, 1)")
        eps = self.layer_norm_epsilon
        if not _is_number(eps) or not (eps > 0 and math.isfinite(eps)):
            problems.append(f"layer_norm_epsilon ({eps!r}) must be a positive finite number")
        for name in _BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                problems.append(f"{name} ({value!r}) must be true or false")
        for name, choices in KERNEL_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                problems.append(f"{name} ({value!r}) must be one of {', '.join(map(repr, choices))}")
        d, h = self.n_embd, self.n_head
        if _is_pos_int(d) and _is_pos_int(h) and d % h != 0:
            problems.append(f"n_head ({h}) must divide n_embd ({d})")
        return problems

    @property
    def head_dim(self) -> int:
        """Width of one attention head, n_embd / n_head."""
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding table: vocab_size rounded up to pad_vocab_to_multiple.

        Padded rows are never a target, never sampled and never exported: the model slices logits to
        ``vocab_size`` columns before any loss or output.
        """
        m = self.pad_vocab_to_multiple
        return -(-self.vocab_size // m) * m

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable); ``from_dict(to_dict())`` round-trips."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from a mapping, e.g. a parsed JSON/YAML file.

        Raises:
            ValueError: on unknown keys (listing the valid ones), missing required keys, or invalid values.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        problems = []
        if unknown:
            problems.append(f"unknown keys {unknown}; valid keys are {sorted(fields)}")
        if missing:
            problems.append(f"missing required keys {missing}")
        if problems:
            raise ValueError("invalid GPTConfig:\n  - " + "\n  - ".join(problems))
        return cls(**d)

    def replace(self, **overrides: Any) -> GPTConfig:
        """A copy with some fields changed; unknown field names are an error listing the valid ones."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
