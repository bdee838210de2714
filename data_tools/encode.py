"""Documents to token ids in bounded memory: long documents are encoded in pieces, cut where GPT-2's
pre-tokenizer cuts anyway, so the ids are the same as for the whole document.

The ids come from the `tokenizers` library, or from tiktoken where it gives the same ids, about four
times faster per core (data_tools.fast_encode): `choose_encoder` decides once per job, checking on a sample.

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

import dataclasses
import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from data_tools.errors import DataError
from data_tools.fast_encode import TiktokenEncoder, tiktoken_encoder

logger = logging.getLogger(__name__)

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
    encoder: Any, texts: Sequence[str], eod_id: int, dtype: np.dtype | str
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all `texts`, each followed by `eod_id`, flat; and the per-text lengths (EOD included).
    `encoder`: a `tokenizers.Tokenizer` or the TiktokenEncoder chosen for it (the same ids). Short texts
    are encoded in one batch; a text over MAX_PIECE_CHARS piece by piece."""
    short = [t for t in texts if len(t) <= MAX_PIECE_CHARS]
    encoded = iter(encode_texts(encoder, short))
    ids: list[Sequence[int] | np.ndarray] = []
    for text in texts:
        if len(text) <= MAX_PIECE_CHARS:
            ids.append(next(encoded))
        else:
            ids.append(np.concatenate([encode_one(encoder, p, dtype) for p in pieces(text)]))
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    for x, end, n in zip(ids, ends, lengths, strict=True):
        flat[end - n : end - 1] = x
        flat[end - 1] = eod_id
    return flat, lengths


def encode_one(encoder: Any, text: str, dtype: np.dtype | str) -> np.ndarray:
    """The ids of one text (at most MAX_PIECE_CHARS characters) as an array."""
    return np.asarray(encode_texts(encoder, [text])[0], dtype=dtype)


def encode_texts(encoder: Any, texts: list[str]) -> list[Sequence[int] | np.ndarray]:
    """The ids of each text, whole (no pieces): `encoder` is a `tokenizers.Tokenizer` (one batch call; it
    is single-threaded in the workers) or a TiktokenEncoder (text by text, faster than its batch call)."""
    if isinstance(encoder, TiktokenEncoder):
        return [encoder.encode(t) for t in texts]
    return [e.ids for e in encoder.encode_batch_fast(texts, add_special_tokens=False)]


# ---- which encoder --------------------------------------------------------------------------------

ENCODERS = ("auto", "tiktoken", "tokenizers")
# What tiktoken is compared with `tokenizers` on, besides every vocabulary entry and the corpus's first
# documents: special tokens in text, nothing, whitespace of every kind, scripts, digits, marks, emoji.
CHECK_TEXTS = (
    "",
    "<|endoftext|>",
    "x = 1<|endoftext|>def f():\n    return '<|endoftext|>'<|endoftext|><|endoftext|>\n",
    "<|endoftext|  <|endoftext <|endoftext|>> <||endoftext|>",
    "it's I'll we've they're I'm he'd IT'S ''s 'll'd x' s",
    "x = 1\r\n\ty = 2\r\n\r\n    \f\v  \n" + "".join(c for c in map(chr, range(0x3100)) if c.isspace()),
    "".join(f"a{c}b {c}{c}1{c} {c}\n" for c in "\x85\xa0\u1680\u180e\u200b\u2028\u2029\u202f\u3000\ufeff"),
    "é中文 ñandú Ελληνικά кириллица עברית العربية हिन्दी ภาษาไทย 한국어 e\u0301 ﬁ ǅ",
    "x² ½ Ⅻ ١٢٣ ߁ 12345678901234567890 3.14e-10 0x1F 1_000",
    "👩\u200d💻 🇫🇷 ☃\ufe0f \U0010ffff \ue000 \x00\x01\x7f \u0378 \uffff",
    "    if x:\n        y = [a, b]  # comment\n\n\n" + " " * 100 + "z\n" + "\t" * 20 + "\n",
)


@dataclasses.dataclass(frozen=True)
class ChosenEncoder:
    """What the workers encode with, and which library that is."""

    encoder: Any  # for encode_documents: the tokenizers.Tokenizer itself, or a TiktokenEncoder
    backend: str  # "tiktoken" or "tokenizers"
    reason: str | None = None  # why not tiktoken


def choose_encoder(tokenizer: Any, choice: str = "auto", sample: Iterable[str] = ()) -> ChosenEncoder:
    """The encoder for `tokenizer` (a `tokenizers.Tokenizer`), logged: tiktoken where it converts exactly
    (data_tools.fast_encode) and gives the same ids as `tokenizers` on CHECK_TEXTS, every vocabulary entry
    and `sample` (iterated only then); otherwise `tokenizers`, with the reason. `choice` "tiktoken" raises
    DataError instead of falling back; "tokenizers" skips tiktoken."""
    if choice not in ENCODERS:
        raise DataError(f"encoder {choice!r}: choose one of {', '.join(ENCODERS)}")
    if choice == "tokenizers":
        logger.info("encoding with tokenizers (--encoder tokenizers)")
        return ChosenEncoder(tokenizer, "tokenizers", "--encoder tokenizers")
    fast = tiktoken_encoder(tokenizer)
    if isinstance(fast, TiktokenEncoder):
        specials = "".join(f"a{t}b {t}{t}\n" for t in sorted(fast.encoding.special_tokens_set))
        texts = [*CHECK_TEXTS, specials, *fast.token_texts(), *sample]
        fast = _first_difference(tokenizer, fast, texts) or fast
    if isinstance(fast, str):
        if choice == "tiktoken":
            raise DataError(f"--encoder tiktoken: {fast}. Use --encoder auto to fall back to tokenizers.")
        logger.warning("encoding with tokenizers, not the faster tiktoken: %s", fast)
        return ChosenEncoder(tokenizer, "tokenizers", fast)
    logger.info("encoding with tiktoken: the same ids as tokenizers on %d sample texts", len(texts))
    return ChosenEncoder(fast, "tiktoken")


def _first_difference(tokenizer: Any, fast: TiktokenEncoder, texts: list[str]) -> str | None:
    """Where tiktoken's ids differ from `tokenizers`' on `texts`, or None."""
    for i, (a, b) in enumerate(zip(encode_texts(tokenizer, texts), encode_texts(fast, texts), strict=True)):
        a, b = list(a), b.tolist()
        if a != b:
            at = next((j for j, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), min(len(a), len(b)))
            return (
                f"its ids differ from tokenizers' on sample text {i} ({texts[i][:60]!r}...) at token {at}: "
                f"{a[at : at + 4]} from tokenizers, {b[at : at + 4]} from tiktoken"
            )
    return None
