"""Fill-in-the-middle: the sentinel tokens, the training transform and the prompt layout for infilling.

The transform is that of Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the
Middle"), applied as StarCoder's Megatron-LM did: each document of a packed sample (the tokens between two
end-of-document tokens; the sample's first and last may be parts of documents) is, with probability
`rate`, decoded, split at two uniformly random character positions into prefix, middle and suffix, and the
three are encoded again, each on its own, and written as

    PSM  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM  <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle     (with probability `spm_rate`)

SPM is the paper's second variant (its section 5.1): the prefix runs straight into the middle, so a prompt
that ends mid-word is continued as one text. The end-of-document token after the middle stays: it is what
the model learns to emit when the middle is done.

The sample keeps its length: a transformed document takes exactly the tokens the original took. It is
usually a few tokens longer (three sentinels, and text encoded in three parts): the excess is cut from the
end of the suffix, then from the start of the prefix (the model sees a file excerpt, as it does at a
sample's edges); it is seldom shorter, and then `<fim_pad>` tokens fill the front of it. The training loss
ignores targets that are `<fim_pad>` (training.data). A document is left as it is when it cannot be
transformed: no tokens, bytes that are not whole UTF-8 (a sample's edge cut inside a character), or fewer
tokens than the sentinels need.

Every random choice comes from a generator seeded with (seed, key) where the key names the sample (its
dataset and index): a resumed run, a run on another data-parallel size and a rerun see the same samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_tools.encode import encode_texts
from data_tools.errors import DataError

FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)  # StarCoder's names
# A stream of the generator's seed no other use of the training seed draws from.
_FIM_STREAM = 0x46494D


@dataclasses.dataclass(frozen=True)
class FimIds:
    prefix: int
    middle: int
    suffix: int
    pad: int


def fim_ids(tokenizer: Any, where: str = "the tokenizer") -> FimIds:
    """The sentinels' ids in `tokenizer` (a `tokenizers.Tokenizer`); DataError naming `where` and the fix
    when it lacks them."""
    ids = [tokenizer.token_to_id(t) for t in FIM_TOKENS]
    if None in ids:
        missing = ", ".join(t for t, i in zip(FIM_TOKENS, ids, strict=True) if i is None)
        raise DataError(
            f"{where}: the tokenizer has no {missing} token, which fill-in-the-middle needs. Train a "
            "tokenizer with codeparrot-train-tokenizer (it reserves them) and run codeparrot-preprocess "
            "again, or set data.fim_rate=0 to train left to right only."
        )
    return FimIds(*ids)


def infill_prompt(prefix: str, suffix: str, spm: bool = False) -> str:
    """The prompt whose continuation is the middle between `prefix` and `suffix` (ending with the
    end-of-document token). The tokenizer splits text at special tokens first, so the prefix and suffix are
    encoded on their own, as in training."""
    if spm:
        return f"{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}"
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def token_bytes(tokenizer: Any) -> list[bytes]:
    """Each id's bytes, for a byte-level BPE `tokenizers.Tokenizer` (special tokens: their text's UTF-8)."""
    from data_tools.fast_encode import byte_decoder

    chars = byte_decoder()
    special = {a.content for a in tokenizer.get_added_tokens_decoder().values()}
    out = [b""] * tokenizer.get_vocab_size()
    for s, i in tokenizer.get_vocab().items():
        out[i] = s.encode("utf-8") if s in special else bytes(chars[c] for c in s)
    return out


@dataclasses.dataclass(frozen=True)
class FimSettings:
    rate: float  # probability that a document is transformed
    spm_rate: float  # probability that a transformed document is written SPM rather than PSM
    seed: int


class FimTransform:
    """Applies fill-in-the-middle to packed samples (see the module docstring).

    `encoder`: a `tokenizers.Tokenizer` or the TiktokenEncoder that gives its ids
    (data_tools.encode.choose_encoder)."""

    def __init__(
        self, tokenizer: Any, encoder: Any, eod: int, settings: FimSettings, where: str = ""
    ) -> None:
        self.ids = fim_ids(tokenizer, where or "the tokenizer")
        self.encoder, self.eod, self.settings = encoder, eod, settings
        self._bytes = token_bytes(tokenizer)

    def __call__(self, sample: np.ndarray, key: Sequence[int]) -> np.ndarray:
        """`sample` (int64 tokens) with its documents transformed; the same length, a new array."""
        s = self.settings
        if s.rate <= 0:
            return sample
        rng = np.random.default_rng([s.seed, _FIM_STREAM, *key])
        out = sample.copy()
        bounds = np.concatenate([[-1], np.flatnonzero(sample == self.eod), [len(sample)]])
        for a, b in zip(bounds[:-1] + 1, bounds[1:], strict=True):
            if b <= a or rng.random() >= s.rate:
                continue
            new = self.permute(sample[a:b], rng)
            if new is not None:
                out[a:b] = new
        return out

    def permute(self, doc: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """One document's tokens as PSM or SPM, `len(doc)` tokens; None when it cannot be transformed."""
        try:
            text = b"".join(map(self._bytes.__getitem__, doc.tolist())).decode("utf-8")
        except UnicodeDecodeError:
            return None
        lo, hi = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        spm = rng.random() < self.settings.spm_rate
        parts = encode_texts(self.encoder, [text[:lo], text[lo:hi], text[hi:]])
        prefix, middle, suffix = (np.asarray(t, dtype=np.int64) for t in parts)
        excess = len(prefix) + len(middle) + len(suffix) + 3 - len(doc)
        if excess > 0:
            cut = min(excess, len(suffix))
            suffix, excess = suffix[: len(suffix) - cut], excess - cut
            cut = min(excess, len(prefix))
            prefix, excess = prefix[cut:], excess - cut
            if excess > 0:
                return None
        i = self.ids
        pad = np.full(-excess, i.pad, dtype=np.int64)
        if spm:
            parts = [pad, [i.prefix, i.suffix], suffix, [i.middle], prefix, middle]
        else:
            parts = [pad, [i.prefix], prefix, [i.suffix], suffix, [i.middle], middle]
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


class FimDataset:
    """A dataset of packed samples (PackedDataset) with `transform` applied to each; sample `i` is keyed
    by (`dataset_key`, i), so its transform does not depend on who reads it or when."""

    def __init__(self, dataset: Any, transform: FimTransform, dataset_key: int = 0) -> None:
        self.dataset, self.transform, self.dataset_key = dataset, transform, dataset_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.transform(self.dataset[i], (self.dataset_key, i))
