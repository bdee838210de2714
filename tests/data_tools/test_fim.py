"""Fill-in-the-middle on packed samples (data_tools.fim): rate 0 is the left-to-right sample itself, rate 1
transforms every document, PSM and SPM samples give the document back, the rate and the SPM share follow
their settings, and each sample depends only on the seed and its key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_tools.dataset import PackedDataset
from data_tools.encode import choose_encoder, encode_texts
from data_tools.errors import DataError
from data_tools.fim import FimDataset, FimSettings, FimTransform, fim_ids, token_bytes
from data_tools.indexed_dataset import IndexedDataset, write_dataset
from data_tools.train_tokenizer import load_tokenizer

from .conftest import code_doc


@pytest.fixture(scope="module")
def tok(small_tokenizer):
    tokenizer, eod = load_tokenizer(small_tokenizer)
    return tokenizer, eod, choose_encoder(tokenizer).encoder


def transform(tok, rate=0.5, spm_rate=0.5, seed=1234) -> FimTransform:
    tokenizer, eod, encoder = tok
    return FimTransform(tokenizer, encoder, eod, FimSettings(rate, spm_rate, seed))


def encode(tok, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(t, dtype=np.int64) for t in encode_texts(tok[2], texts)]


def documents(sample: np.ndarray, eod: int) -> list[np.ndarray]:
    """The sample cut at its end-of-document tokens (the last piece may be a document's start)."""
    bounds = np.concatenate([[-1], np.flatnonzero(sample == eod), [len(sample)]])
    return [sample[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def text_of(tok, ids) -> str:
    table = token_bytes(tok[0])
    return b"".join(table[i] for i in np.asarray(ids).tolist()).decode("utf-8")


def parse(tok, doc: np.ndarray) -> tuple[str, int, np.ndarray, np.ndarray, np.ndarray]:
    """A transformed document -> (layout "PSM" or "SPM", pads, prefix, middle, suffix tokens)."""
    i = fim_ids(tok[0])
    pads = int(np.argmax(doc != i.pad))
    body = doc[pads:]
    assert body[0] == i.prefix and (body == i.suffix).sum() == 1 and (body == i.middle).sum() == 1, body
    s, m = int(np.flatnonzero(body == i.suffix)[0]), int(np.flatnonzero(body == i.middle)[0])
    if s == 1:  # SPM: <pre> <suf> suffix <mid> prefix+middle (the prefix runs into the middle)
        return "SPM", pads, np.empty(0, np.int64), body[m + 1 :], body[2:m]
    return "PSM", pads, body[1:s], body[m + 1 :], body[s + 1 : m]


@pytest.fixture(scope="module")
def stdlib_docs(tok, stdlib_sample) -> list[np.ndarray]:
    """Real files of 200 to 4,000 characters, tokenized."""
    texts = [t for t in stdlib_sample if 200 <= len(t) <= 4000]
    assert len(texts) >= 10
    return encode(tok, texts)


@pytest.fixture
def packed(tmp_path, tok) -> PackedDataset:
    """A shard of 300 small documents separated by end-of-document tokens, packed into 64-token samples."""
    _, eod, _ = tok
    docs = encode(tok, [code_doc(i)[: 40 + 7 * (i % 30)] for i in range(300)])
    write_dataset(tmp_path / "s", [np.append(d, eod) for d in docs], np.uint16)
    return PackedDataset([IndexedDataset(tmp_path / "s")], seq_len=64)


def test_rate_zero_is_the_left_to_right_sample_byte_for_byte(packed, tok):
    ds = FimDataset(packed, transform(tok, rate=0.0))
    for i in range(len(packed)):
        a, b = ds[i], packed[i]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_rate_one_transforms_every_document(packed, tok, tmp_path, stdlib_docs):
    """Every document is transformed, except those that cannot hold the sentinels: fewer than 4 tokens,
    a sample's edge cut inside a character, or a middle drawn so long that the prefix and suffix left
    cannot absorb the 3 extra tokens (these stay exactly as they were, a few percent of short documents)."""
    eod, ids = tok[1], fim_ids(tok[0])
    ds = FimDataset(packed, transform(tok, rate=1.0))
    counts = {"transformed": 0, "kept": 0}
    for i in range(len(packed)):
        original, sample = packed[i], ds[i]
        assert len(sample) == len(original) and sample.dtype == np.int64
        np.testing.assert_array_equal(sample == eod, original == eod)  # documents stay where they were
        pieces = list(zip(documents(original, eod), documents(sample, eod), strict=True))
        for k, (before, after) in enumerate(pieces):
            edge = k in (0, len(pieces) - 1)
            if len(after) == 0:  # a sample that starts or ends at an end-of-document token
                continue
            if after[int(np.argmax(after != ids.pad))] == ids.prefix:
                counts["transformed"] += not edge
                continue
            np.testing.assert_array_equal(after, before)
            if not edge:
                assert len(before) >= 4  # the packed fixture's whole documents are all long enough
                counts["kept"] += 1
    assert counts["transformed"] > 40 and counts["kept"] < 0.1 * counts["transformed"], counts

    # Real files of 200 characters and more: every one.
    write_dataset(tmp_path / "long", [np.append(d, eod) for d in stdlib_docs], np.uint16)
    seq_len = sum(map(len, stdlib_docs)) + len(stdlib_docs) - 1  # one sample holding them all
    whole = FimDataset(PackedDataset([IndexedDataset(tmp_path / "long")], seq_len), transform(tok, rate=1.0))
    assert len(whole) == 1
    pieces = documents(whole[0], eod)[:-1]
    assert len(pieces) == len(stdlib_docs)
    assert all(p[int(np.argmax(p != ids.pad))] == ids.prefix for p in pieces)


@pytest.mark.parametrize("layout", ["PSM", "SPM"])
def test_the_document_is_recovered_from_the_sample(tok, stdlib_docs, layout):
    """The sample holds the document's prefix, middle and suffix (split where the generator drew), each
    encoded on its own, less exactly the excess: the sample keeps the document's length, so the three
    sentinels and any extra tokens of encoding in three parts are cut from the end of the suffix, then from
    the start of the prefix; a shortfall is padded at the front. The middle is never cut."""
    fim = transform(tok, rate=1.0, spm_rate=1.0 if layout == "SPM" else 0.0)
    cut_some = 0
    for n, doc in enumerate(stdlib_docs):
        text = text_of(tok, doc)
        for key in range(5):
            out = fim.permute(doc, np.random.default_rng([7, n, key]))
            lo, hi = sorted(int(x) for x in np.random.default_rng([7, n, key]).integers(0, len(text) + 1, 2))
            assert out is not None and len(out) == len(doc)
            got, pads, prefix, middle, suffix = parse(tok, out)
            assert got == layout
            p, m, s = encode(tok, [text[:lo], text[lo:hi], text[hi:]])
            excess = len(p) + len(m) + len(s) + 3 - len(doc)
            assert pads == max(0, -excess)
            from_suffix = min(max(0, excess), len(s))
            from_prefix = max(0, excess) - from_suffix
            head, tail = p[:from_prefix], s[len(s) - from_suffix :]
            p, s = p[from_prefix:], s[: len(s) - from_suffix]
            if layout == "SPM":  # the prefix runs straight into the middle
                np.testing.assert_array_equal(middle, np.concatenate([p, m]))
            else:
                np.testing.assert_array_equal(prefix, p)
                np.testing.assert_array_equal(middle, m)
            np.testing.assert_array_equal(suffix, s)
            # In order, the sample's text is the document's, less the tokens cut at its two ends.
            kept = text_of(tok, np.concatenate([prefix, middle, suffix]))
            assert text_of(tok, head) + kept + text_of(tok, tail) == text
            assert kept == text or excess > 0
            cut_some += excess > 0
    assert cut_some > 0


@pytest.mark.parametrize(("rate", "spm_rate"), [(0.5, 0.5), (0.2, 0.9)])
def test_rate_and_spm_share_follow_the_settings(tok, rate, spm_rate):
    """Over 2,000 documents the share transformed and, of those, the share written SPM are within three
    standard deviations of data.fim_rate and data.fim_spm_rate."""
    eod, n = tok[1], 2000
    docs = encode(tok, [code_doc(i) for i in range(n)])
    sample = np.concatenate([np.append(d, eod) for d in docs])
    out = transform(tok, rate, spm_rate, seed=99)(sample, (0, 0))
    layouts = []
    for before, after in zip(documents(sample, eod)[:-1], documents(out, eod)[:-1], strict=True):
        if not np.array_equal(before, after):
            layouts.append(parse(tok, after)[0])
    within = lambda share, p, count: abs(share - p) < 3 * math.sqrt(p * (1 - p) / count)  # noqa: E731
    assert within(len(layouts) / n, rate, n), len(layouts)
    assert within(layouts.count("SPM") / len(layouts), spm_rate, len(layouts)), layouts.count("SPM")


def test_a_sample_depends_only_on_the_seed_and_its_key(packed, tok):
    """Read in any order, by another instance: the same samples. Another seed or another dataset key
    (data path): other choices."""
    a = FimDataset(packed, transform(tok, seed=5))
    forward = [a[i] for i in range(len(packed))]
    b = FimDataset(packed, transform(tok, seed=5))
    backward = [b[i] for i in reversed(range(len(packed)))][::-1]
    for x, y in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(x, y)
    reseeded = FimDataset(packed, transform(tok, seed=6))
    other_path = FimDataset(packed, transform(tok, seed=5), dataset_key=1)
    differs = lambda ds: sum(not np.array_equal(ds[i], forward[i]) for i in range(len(packed)))  # noqa: E731
    assert differs(reseeded) > len(packed) // 2 and differs(other_path) > len(packed) // 2


def test_a_tokenizer_without_the_sentinels_is_refused_naming_the_fix(tmp_path, stdlib_sample):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    old = Tokenizer(models.BPE())
    old.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    old.train_from_iterator(
        stdlib_sample[:5], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    )
    with pytest.raises(DataError) as e:
        fim_ids(old, "data.fim_rate > 0 but data/ was tokenized with tok/")
    assert str(e.value) == (
        "data.fim_rate > 0 but data/ was tokenized with tok/: the tokenizer has no <fim_prefix>, "
        "<fim_middle>, <fim_suffix>, <fim_pad> token, which fill-in-the-middle needs. Train a tokenizer with "
        "codeparrot-train-tokenizer (it reserves them) and run codeparrot-preprocess again, or set "
        "data.fim_rate=0 to train left to right only."
    )
