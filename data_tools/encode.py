"""Documents to token ids in bounded memory: long documents are encoded in pieces, cut where GPT-2's
pre-tokenizer cuts anyway, so the ids are the same as for the whole document.

The tokenizers library holds about 160 bytes per character of one input while encoding it (offsets and
alignments per byte, a string per token): a 100 MB document needs 16 GB and ends in an allocation failure.
Pieces of at most `MAX_PIECE_CHARS` characters keep that under 50 MB whatever the document.

Why the cuts are exact: the byte-level pre-tokenizer splits text with GPT-2's pattern
`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`, and BPE merges only
within a pre-token. A cut is exact when no pre-token spans it and the pattern only looks forward, which
holds (first choice) before an ASCII whitespace character that follows a printable ASCII character
(`foo)|\\n    bar`: no pre-token holds both a non-space and a space), or (second choice) between an ASCII
letter, digit and punctuation character of different classes, except after an apostrophe (`'s` is one
pre-token). A window with neither (a run of over 128K letters of one class) is cut at its end: the one
pre-token spanning that cut is then encoded as two, a difference of a token or two in such a document.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

MAX_PIECE_CHARS = 1 << 18  # 256K characters: about 40 MB of tokenizer memory
# Exact cut positions (the piece before the cut ends just before the match's end).
_CUT_BEFORE_SPACE = re.compile(r"(?<=[!-~])[ \t\n\r\f\v]")
_LETTER, _DIGIT, _PUNCT = r"[A-Za-z]", r"[0-9]", r"[!-&(-/:-@\[-`{-~]"  # punctuation without '
_CUT_BETWEEN_CLASSES = re.compile(
    "|".join(f"(?<={a})(?={b})" for a, b in itertools.permutations((_LETTER, _DIGIT, _PUNCT), 2))
)


def pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of at most `max_chars` characters (at least half that, but the last),
    cut where the GPT-2 pre-tokenizer cuts (see the module docstring); `text` itself when it is short."""
    start = 0
    while len(text) - start > max_chars:
        lo, hi = start + max_chars // 2, start + max_chars
        cut = _CUT_BEFORE_SPACE.search(text, lo, hi + 1)
        cut = cut or _CUT_BETWEEN_CLASSES.search(text, lo, hi + 1)
        end = cut.start() if cut else hi
        yield text[start:end]
        start = end
    yield text[start:]


def encode_documents(
    tokenizer: Any, texts: Sequence[str], eod_id: int, dtype: np.dtype | str
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all `texts`, each followed by `eod_id`, flat; and the per-text lengths (EOD included).
    Short texts are encoded in one batch; a text over MAX_PIECE_CHARS piece by piece."""
    short = [t for t in texts if len(t) <= MAX_PIECE_CHARS]
    encoded = iter(tokenizer.encode_batch_fast(short, add_special_tokens=False))
    ids: list[Sequence[int] | np.ndarray] = []
    for text in texts:
        if len(text) <= MAX_PIECE_CHARS:
            ids.append(next(encoded).ids)
        else:
            ids.append(np.concatenate([encode_one(tokenizer, p, dtype) for p in pieces(text)]))
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    for x, end, n in zip(ids, ends, lengths, strict=True):
        flat[end - n : end - 1] = x
        flat[end - 1] = eod_id
    return flat, lengths


def encode_one(tokenizer: Any, text: str, dtype: np.dtype | str) -> np.ndarray:
    """The ids of one text (at most MAX_PIECE_CHARS characters) as an array."""
    return np.asarray(tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids, dtype=dtype)
