"""KV-cache decoding and sampling (model.gpt2) and batched code completion (evaluation.generate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from data_tools.errors import DataError
from data_tools.fim import FIM_TOKENS, fim_ids, infill_prompt
from data_tools.train_tokenizer import EOD_TOKEN, train
from evaluation import generate as gen
from evaluation.checkpoint import Loaded
from evaluation.export import save_hf_tokenizer
from model.gpt2 import GPT, sample
from model.hf import to_hf
from model.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]
NO_DROPOUT = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def make(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(get_preset("tiny", **{**NO_DROPOUT, **overrides})).eval()


def greedy_without_cache(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The reference: every step a full forward over the last n_positions tokens."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.n_positions :])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


# ---- the KV cache ------------------------------------------------------------------------------------


@torch.no_grad()
def test_cached_logits_equal_full_forward_at_every_position() -> None:
    model = make(vocab_size=509)
    idx = torch.randint(0, 509, (3, 40), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx)  # [3, 40, 509]
    logits, cache = model.decode(idx[:, :11])  # prefill, then chunks of 1 and 4 tokens
    pieces, t = [logits], 11
    for size in [1] * 9 + [4] * 5:
        logits, cache = model.decode(idx[:, t : t + size], cache)
        pieces.append(logits)
        t += size
    assert t == 40 and cache[0][0].shape == (3, 4, 40, 16)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    last, _ = model.decode(idx, last_only=True)
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-5)


@torch.no_grad()
def test_left_padded_rows_compute_what_they_compute_alone() -> None:
    model = make(vocab_size=509)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 509, (n,), generator=g) for n in (5, 17, 12)]
    idx = torch.full((3, 17), 7)
    keep = torch.zeros(3, 17, dtype=torch.bool)
    for r, p in enumerate(prompts):
        idx[r, 17 - len(p) :], keep[r, 17 - len(p) :] = p, True
    logits, cache = model.decode(idx, keep=keep)
    nxt = torch.randint(0, 509, (3, 1), generator=g)
    step, _ = model.decode(nxt, cache, torch.nn.functional.pad(keep, (0, 1), value=True))
    for r, p in enumerate(prompts):
        alone, _ = model(torch.cat((p, nxt[r])).unsqueeze(0))
        torch.testing.assert_close(logits[r, 17 - len(p) :], alone[0, :-1], rtol=0, atol=1e-5)
        torch.testing.assert_close(step[r, 0], alone[0, -1], rtol=0, atol=1e-5)
    assert torch.isfinite(logits).all()  # padded queries attend to themselves: no NaN anywhere


def test_decode_refuses_more_than_the_context() -> None:
    model = make(n_positions=16)
    _, cache = model.decode(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"16 cached \+ 1 new tokens exceed the context n_positions \(16\)"):
        model.decode(torch.zeros(1, 1, dtype=torch.long), cache)


@pytest.mark.parametrize("prompt_len, new", [(7, 20), (20, 30)])  # the second slides past n_positions 32
def test_greedy_generation_with_cache_equals_without(prompt_len: int, new: int) -> None:
    model = make(vocab_size=509, n_positions=32)
    prompt = torch.randint(0, 509, (2, prompt_len), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = greedy_without_cache(model, prompt, new)
    assert torch.equal(model.generate(prompt, new, temperature=0), expected)


def test_generate_stops_when_asked() -> None:
    model = make()
    calls = []
    out = model.generate(
        torch.zeros(2, 3, dtype=torch.long),
        50,
        temperature=0,
        stop=lambda i: calls.append(i) or len(calls) == 4,
    )
    assert out.shape == (2, 7)


# ---- sampling ----------------------------------------------------------------------------------------


def test_sample_top_k_and_top_p_restrict_the_draws() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample(logits, 0.0), torch.zeros(2000, 1, dtype=torch.long))
    assert set(sample(logits, 1.0, top_k=2, generator=g).unique().tolist()) == {0, 1}
    assert set(sample(logits, 1.0, top_p=0.75, generator=g).unique().tolist()) == {0, 1}  # 0.5 + 0.3 >= 0.75
    assert set(sample(logits, 1.0, top_p=0.8, generator=g).unique().tolist()) == {0, 1}
    assert set(sample(logits, 1.0, top_p=0.81, generator=g).unique().tolist()) == {0, 1, 2}
    assert set(sample(logits, 1.0, top_p=0.0, generator=g).unique().tolist()) == {0}
    assert set(sample(logits, 1.0, top_p=1.0, generator=g).unique().tolist()) == {0, 1, 2, 3}
    draws = sample(logits, 1.0, top_p=0.95, generator=g).flatten()
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.95) < 0.05  # renormalised over the nucleus


# ---- complete ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    texts = [p.read_text() for p in sorted((ROOT / "model").glob("*.py"))]
    train(texts, out, vocab_size=400, show_progress=False)
    return Tokenizer.from_file(str(out / "tokenizer.json"))


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> GPT:
    return make(vocab_size=tokenizer.get_vocab_size(), n_positions=64)


PROMPTS = ["def forward(self, x):\n", "import torch", "class Block(nn.Module):\n    def __init__(self", ""]


def test_batched_greedy_rows_complete_as_their_prompts_alone(model: GPT, tokenizer: Tokenizer) -> None:
    kw = dict(max_new_tokens=24, temperature=0.0, stop=())
    batched = gen.complete(model, tokenizer, PROMPTS, batch_size=4, **kw)
    alone = [gen.complete(model, tokenizer, [p], **kw)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(c) == 1 for c in batched) and batched[0][0]


def test_sampling_is_deterministic_given_the_seed(model: GPT, tokenizer: Tokenizer) -> None:
    kw = dict(n=3, max_new_tokens=16, temperature=1.0, top_p=0.95, stop=(), batch_size=4)
    first = gen.complete(model, tokenizer, PROMPTS[:2], seed=5, **kw)
    assert first == gen.complete(model, tokenizer, PROMPTS[:2], seed=5, **kw)
    assert first != gen.complete(model, tokenizer, PROMPTS[:2], seed=6, **kw)
    assert [len(c) for c in first] == [3, 3] and len(set(first[0])) > 1


def test_completion_ends_at_a_stop_sequence_or_the_end_of_document(
    model: GPT, tokenizer: Tokenizer, monkeypatch
) -> None:
    kw = dict(max_new_tokens=24, temperature=0.0)
    [[text]] = gen.complete(model, tokenizer, PROMPTS[:1], stop=(), **kw)
    stop = text[6:9]
    assert gen.complete(model, tokenizer, PROMPTS[:1], stop=(stop,), **kw) == [[text[: text.index(stop)]]]
    assert gen.truncate("a\ndef b\n#c", gen.CODEPARROT_STOPS) == "a"

    ids = tokenizer.encode(PROMPTS[0]).ids
    tokens = model.generate(torch.tensor([ids]), 24, temperature=0)[0, len(ids) :].tolist()
    eod = tokens[3]  # treat the 4th greedy token as the end of document: the row ends there
    decodes = []
    real_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    [[ended]] = gen.complete(model, tokenizer, PROMPTS[:1], stop=(), eod_id=eod, **kw)
    assert ended == tokenizer.decode(tokens[: tokens.index(eod)])
    assert len(decodes) == tokens.index(eod) + 1  # the prompt, then one step per token up to the end
    assert tokenizer.token_to_id(EOD_TOKEN) is not None


# ---- infill ------------------------------------------------------------------------------------------


def greedy_tokens(model: GPT, ids: list[int], new: int) -> list[int]:
    return model.generate(torch.tensor([ids]), new, temperature=0)[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def untied(tokenizer: Tokenizer) -> GPT:
    """A random model with its own output projection: with tied embeddings a random model repeats its last
    input token, here <fim_middle>, which would end every middle at once."""
    return make(vocab_size=tokenizer.get_vocab_size(), n_positions=64, tie_word_embeddings=False)


def test_infill_writes_the_middle_after_the_psm_prompt(untied: GPT, tokenizer: Tokenizer) -> None:
    model = untied
    prefix, suffix = "def forward(self, x):\n", "\n    return y\n"
    ids = tokenizer.encode(infill_prompt(prefix, suffix)).ids
    sentinels = fim_ids(tokenizer)
    assert ids[0] == sentinels.prefix and ids[-1] == sentinels.middle and sentinels.suffix in ids
    tokens = greedy_tokens(model, ids, 16)
    ends = {sentinels.prefix, sentinels.middle, sentinels.suffix, sentinels.pad, 0}
    assert ends.isdisjoint(tokens)  # nothing ends this random model's middle early: it is all 16 tokens
    kw = dict(max_new_tokens=16, temperature=0.0)
    [[middle]] = gen.infill(model, tokenizer, [prefix], [suffix], **kw)
    assert middle == tokenizer.decode(tokens)
    # Batched with other pairs (left padding), a pair fills as alone; a middle is complete's continuation of
    # the PSM prompt text up to its first end token (complete reads past sentinels).
    pairs = [("import torch\n", ""), (prefix, suffix), ("", "x = 1\n")]
    batched = gen.infill(model, tokenizer, *map(list, zip(*pairs, strict=True)), batch_size=3, **kw)
    assert batched[1] == [middle]
    assert batched == [gen.infill(model, tokenizer, [p], [s], **kw)[0] for p, s in pairs]
    completions = gen.complete(model, tokenizer, [infill_prompt(p, s) for p, s in pairs], stop=(), **kw)
    assert all(c[0].startswith(m[0]) for c, m in zip(completions, batched, strict=True))


def test_infill_ends_the_middle_at_a_sentinel(tokenizer: Tokenizer) -> None:
    """Relabel the model so that the token it writes at step k is <fim_pad>: the middle ends there."""
    model = make(vocab_size=tokenizer.get_vocab_size(), n_positions=64, tie_word_embeddings=False)
    prefix, suffix = "class Block(nn.Module):\n", "\n        super().__init__()\n"
    ids = tokenizer.encode(infill_prompt(prefix, suffix)).ids
    tokens = greedy_tokens(model, ids, 24)
    pad = fim_ids(tokenizer).pad
    ends = {*vars(fim_ids(tokenizer)).values(), tokenizer.token_to_id(EOD_TOKEN)}
    k = next(k for k in range(2, 24) if tokens[k] not in {*ids, *tokens[:k], *ends})
    assert ends.isdisjoint(tokens[:k])
    with torch.no_grad():  # swap two ids' rows in and out: the model then writes pad where it wrote tokens[k]
        for weight in (model.embed.wte.weight, model.lm_head.weight):
            weight[[tokens[k], pad]] = weight[[pad, tokens[k]]]
    assert greedy_tokens(model, ids, k + 1) == [*tokens[:k], pad]
    [[middle]] = gen.infill(model, tokenizer, [prefix], [suffix], max_new_tokens=24, temperature=0.0)
    assert middle == tokenizer.decode(tokens[:k])


def test_infill_keeps_the_text_around_the_hole_of_a_long_prompt(model: GPT, tokenizer: Tokenizer) -> None:
    prefix = "".join(f"a{i} = {i}\n" for i in range(40))
    suffix = "".join(f"b{i} = {i}\n" for i in range(40))
    with pytest.raises(ValueError, match=r"longer than the model's context of 64 tokens"):
        gen.infill(model, tokenizer, [prefix], [suffix], max_new_tokens=8)
    cut = gen._cut_infill(tokenizer, prefix, suffix, fim_ids(tokenizer), 40)
    s = fim_ids(tokenizer)
    p_ids, s_ids = tokenizer.encode(prefix).ids, tokenizer.encode(suffix).ids
    assert len(p_ids) + len(s_ids) > 40
    assert cut == [s.prefix, *p_ids[len(p_ids) - 37 :], s.suffix, s.middle]  # the suffix went first
    [[middle]] = gen.infill(
        model, tokenizer, [prefix], [suffix], max_new_tokens=8, temperature=0.0, long_prompts="keep-end"
    )
    assert middle == tokenizer.decode(
        greedy_tokens(model, gen._cut_infill(tokenizer, prefix, suffix, s, 56), 8)
    )


def plain_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer with an end-of-document token but no fill-in-the-middle sentinels."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        special_tokens=[EOD_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    plain.train_from_iterator(["def f(x):\n    return x\n"], trainer)
    return plain


def export_dir(model: GPT, tokenizer: Tokenizer, out: Path) -> Path:
    """``model`` written as codeparrot-export writes a model (its weights, then its tokenizer)."""
    eod = tokenizer.token_to_id(EOD_TOKEN)
    to_hf(model, bos_token_id=eod, eos_token_id=eod).save_pretrained(str(out), safe_serialization=True)
    save_hf_tokenizer(Loaded(model, model.config, tokenizer, eod, "test"), out)
    return out


def test_infill_needs_the_sentinels(model: GPT, tmp_path: Path, capsys) -> None:
    plain = plain_tokenizer()
    with pytest.raises(DataError, match=r"^an old model: the tokenizer has no <fim_prefix>, <fim_middle>"):
        gen.infill(model, plain, ["a"], ["b"], where="an old model")
    with pytest.raises(ValueError, match="2 prefixes but 1 suffixes"):
        gen.infill(model, plain, ["a", "b"], ["c"])

    old = export_dir(make(vocab_size=plain.get_vocab_size(), n_positions=64), plain, tmp_path / "old")
    assert gen.main([str(old), "def f(x):", "--suffix", "    return y\n", "--max-new-tokens", "4"]) == 2
    out, err = capsys.readouterr()
    lines = [
        line for line in err.splitlines() if "codeparrot" in line or "Traceback" in line
    ]  # no progress bars
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(
        f"codeparrot-generate: error: {old}: the tokenizer has no <fim_prefix>, "
    ) and ("Train a tokenizer with codeparrot-train-tokenizer (it reserves them)" in lines[0])
    with pytest.raises(SystemExit):
        gen.parse_args([str(old), "x", "--suffix", "y", "--suffix-file", "z"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_transformers_infills_an_export_as_codeparrot_generate(
    untied: GPT, tokenizer: Tokenizer, tmp_path: Path, capsys
) -> None:
    """The export's tokenizer keeps the sentinels as special tokens: transformers users build the same
    PSM prompt, and greedy decoding gives the middle codeparrot-generate --suffix prints."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = export_dir(untied, tokenizer, tmp_path / "hf")
    prefix, suffix = "def forward(self, x):\n", "\n    return y\n"
    (tmp_path / "after.py").write_text(suffix)
    args = ["--temperature", "0", "--max-new-tokens", "12"]
    assert gen.main([str(out), prefix, "--suffix", suffix, *args]) == 0
    printed = capsys.readouterr().out
    assert gen.main([str(out), prefix, "--suffix-file", str(tmp_path / "after.py"), *args]) == 0
    assert capsys.readouterr().out == printed

    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert set(FIM_TOKENS) <= set(hf_tokenizer.all_special_tokens)
    hf_model = GPT2LMHeadModel.from_pretrained(out).eval()
    inputs = hf_tokenizer(f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>", return_tensors="pt")
    assert inputs.input_ids[0].tolist() == tokenizer.encode(infill_prompt(prefix, suffix)).ids
    ends = [hf_tokenizer.eos_token_id, *hf_tokenizer.convert_tokens_to_ids(list(FIM_TOKENS))]
    with torch.no_grad():
        ids = hf_model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=ends)
    middle = ids[0, inputs.input_ids.shape[1] :].tolist()
    middle = middle[: next((i for i, t in enumerate(middle) if t in ends), len(middle))]
    assert middle and printed == hf_tokenizer.decode(middle) + "\n"
