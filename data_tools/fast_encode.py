"""tiktoken as an encoder for the byte-level BPE tokenizers data_tools trains: the same ids as the
`tokenizers` library, about four times faster on one core.

`tiktoken_encoder(tokenizer)` converts a `tokenizers.Tokenizer` (its JSON, `tokenizer.to_str()`) to a
`tiktoken.Encoding`: each vocabulary string back to its bytes (GPT-2's byte-to-character map inverted), the
rank of a mergeable token its id, GPT-2's pre-tokenizer pattern, the added tokens as special tokens. It
returns the reason instead when the ids could differ.

Why the ids are the same when it converts: both libraries split the text at the special tokens, then with
the same pattern, then merge within each pre-token, repeatedly, the adjacent pair of lowest priority
(leftmost on a tie). `tokenizers` may merge only the pairs of its merge list, by list position; tiktoken any
pair whose concatenation is a token, by that token's rank, and a pre-token that is itself a token directly.
The conversion requires (1) merge results with ids increasing in merge order, each above its parts' ids,
and every token but the 256 bytes the result of one merge: then the two priorities order merges alike;
(2) every token `z` of merge `(x, y)` is formed by tiktoken from `x` and `y`: tiktoken's merges on `z`'s
bytes alone, up to `z`'s rank, end in `[x, y]`. Merge ranks rise along a merge sequence (by (1)), so
tiktoken forms `z` the same way in any text; a pair tiktoken merges is then always a pair of the merge
list, and `z`'s bytes alone encode to `[z]` in both (the direct case). Tokenizers trained by
codeparrot-train-tokenizer meet both; the preprocessing job also compares the two on a sample before
using tiktoken (data_tools.encode.choose_encoder).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

# GPT-2's pre-tokenizer pattern: the `tokenizers` ByteLevel pre-tokenizer's (use_regex=True).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclasses.dataclass(frozen=True)
class TiktokenEncoder:
    """A tokenizer's ids through tiktoken; special tokens in the text are encoded as their ids, as
    `tokenizers` does. Pickles (the Encoding rebuilds itself) and survives fork."""

    encoding: Any  # tiktoken.Encoding

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`, uint32. Lone surrogates raise UnicodeEncodeError (data_tools.sources
        rejects such documents; `tokenizers` raises too)."""
        return self.encoding.encode_to_numpy(text, allowed_special="all")

    def token_texts(self) -> list[str]:
        """Every mergeable token that is whole UTF-8, as text: a sample that reaches every merge."""
        texts = []
        for token in self.encoding.token_byte_values():
            try:
                texts.append(token.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        return texts


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the character that stands for each byte -> the byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_encoder(tokenizer: Any) -> TiktokenEncoder | str:
    """A TiktokenEncoder giving `tokenizer`'s ids (a `tokenizers.Tokenizer`), or why there is none: tiktoken
    missing, or a tokenizer that is not byte-level BPE as codeparrot-train-tokenizer makes it (see the
    module docstring)."""
    try:
        import tiktoken
    except ImportError:
        return "tiktoken is not installed (pip install tiktoken)"
    spec = json.loads(tokenizer.to_str())
    if reason := _unsupported(spec):
        return reason
    model, added = spec["model"], spec.get("added_tokens", [])
    chars = byte_decoder()
    ids = {a["content"]: a["id"] for a in added}
    as_bytes = {}  # vocabulary string -> its bytes, the special tokens left out
    for s in model["vocab"]:
        if s not in ids:
            if any(c not in chars for c in s):
                return f"vocabulary entry {s!r} is not made of byte-level characters"
            as_bytes[s] = bytes(chars[c] for c in s)
    ranks = {as_bytes[s]: i for s, i in model["vocab"].items() if s in as_bytes}
    missing = sorted(set(range(256)) - {t[0] for t in ranks if len(t) == 1})
    if missing:
        return f"the byte alphabet is incomplete: no token for {len(missing)} byte(s), e.g. {missing[0]:#04x}"
    if clash := set(ids.values()) & set(ranks.values()):
        return f"added token id {min(clash)} is also a vocabulary entry's id"
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    unknown = next((m for m in merges if not all(s in as_bytes for s in (*m, "".join(m)))), None)
    if unknown is not None:
        return f"merge {unknown} names a token missing from the vocabulary"
    if reason := _merges_problem(ranks, [(as_bytes[x], as_bytes[y]) for x, y in merges]):
        return reason
    encoding = tiktoken.Encoding(
        f"codeparrot-{len(ranks)}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=ids
    )
    return TiktokenEncoder(encoding)


def _unsupported(spec: dict[str, Any]) -> str | None:
    """Why the tokenizer's pipeline is not the byte-level BPE one tiktoken reproduces, or None."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        return f"the model is {model.get('type')}, not BPE"
    for key, ok in (("dropout", None), ("continuing_subword_prefix", ""), ("end_of_word_suffix", "")):
        if model.get(key) not in (None, ok):
            return f"the BPE model sets {key} ({model[key]!r})"
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return "the BPE model sets byte_fallback or ignore_merges"
    if spec.get("normalizer") is not None:
        return f"the tokenizer has a normalizer ({spec['normalizer'].get('type')})"
    want = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    if any(pre.get(k) != v for k, v in want.items()):
        return f"the pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True): {pre}"
    if (spec.get("post_processor") or {}).get("type", "ByteLevel") != "ByteLevel":
        return f"the post-processor is {spec['post_processor']['type']}, not ByteLevel"
    if spec.get("truncation") or spec.get("padding"):
        return "the tokenizer truncates or pads"
    for a in spec.get("added_tokens", []):
        flags = [k for k in ("single_word", "lstrip", "rstrip", "normalized") if a.get(k)]
        if not a.get("special"):
            return f"added token {a['content']!r} is not special"
        if flags:
            return f"added token {a['content']!r} sets {', '.join(flags)}"
        if not a["content"]:
            return "an added token is empty"
    contents = sorted(a["content"] for a in spec.get("added_tokens", []))
    for a, b in itertools.pairwise(contents):
        if b.startswith(a):  # tokenizers takes the longest match, tiktoken either
            return f"added token {a!r} is a prefix of {b!r}"
    return None


def _merges_problem(ranks: dict[bytes, int], merges: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why tiktoken's ranks would merge differently from the merge list (conditions (1) and (2) of the
    module docstring), or None. Every token a merge names is in `ranks`."""
    last, count = -1, 0
    for k, (x, y) in enumerate(merges):
        z = x + y
        if not ranks[x] < ranks[z] > ranks[y] or ranks[z] <= last:
            return f"merge {k} ({x!r} + {y!r}) gives id {ranks[z]}: merge ids not increasing in merge order"
        last, count = ranks[z], count + 1
        if _bpe_parts(ranks, z, ranks[z]) != [x, y]:
            return f"merge {k} ({x!r} + {y!r}): tiktoken forms {z!r} from other parts"
    if count != len(ranks) - 256:
        return f"{len(ranks) - 256 - count} vocabulary entries are neither a byte nor a merge's result"
    return None


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merges on `token`'s bytes alone, stopped before rank `max_rank`: the parts left."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        rank, i = min((ranks.get(a + b, max_rank), i) for i, (a, b) in enumerate(itertools.pairwise(parts)))
        if rank >= max_rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts
