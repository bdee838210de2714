"""The plain GPT-2 module: shapes, loss, padded vocabulary, initialisation, checkpointing, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.gpt2 import GPT
from model.optim import build_optimizer
from model.presets import get_preset

NO_DROPOUT = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def make(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(get_preset("tiny", **{**NO_DROPOUT, **overrides}))


def batch(vocab: int, B: int = 3, T: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    targets = torch.randint(0, vocab, (B, T), generator=g)
    targets[0, :7] = -100
    return idx, targets


def grads(model: GPT) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_forward_shapes_and_return_contract() -> None:
    model = make(vocab_size=509)
    idx, targets = batch(509)
    logits, loss = model(idx)
    assert logits.shape == (3, 20, 509) and loss is None
    logits, loss = model(idx, targets)
    assert logits is None and loss.shape == () and loss.dtype == torch.float32
    logits, loss2 = model(idx, targets, return_logits=True)
    assert logits.shape == (3, 20, 509)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-5)


def test_loss_is_mean_cross_entropy_of_real_vocab_logits() -> None:
    model = make(vocab_size=509).eval()
    idx, targets = batch(509)
    logits, _ = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, 509), targets.reshape(-1), ignore_index=-100)
    _, loss = model(idx, targets)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


def test_chunked_loss_gradients_match_materialised_logits() -> None:
    model = make(vocab_size=509)
    idx, targets = batch(509)
    model(idx, targets)[1].backward()
    chunked = grads(model)
    model.zero_grad()
    model(idx, targets, return_logits=True)[1].backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(chunked[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_padded_vocab_rows_get_no_gradient_and_stay_zero() -> None:
    model = make(vocab_size=509)
    assert model.embed.wte.weight.shape == (512, 64)
    assert torch.all(model.embed.wte.weight[509:] == 0)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        idx, targets = batch(509)
        model(idx, targets)[1].backward()
        assert torch.all(model.embed.wte.weight.grad[509:] == 0)
        opt.step()
        opt.zero_grad()
    assert torch.all(model.embed.wte.weight[509:] == 0)


def test_initialisation_follows_gpt2() -> None:
    model = GPT(get_preset("tiny", n_embd=256, n_layer=8, n_head=4))
    residual_std = 0.02 / math.sqrt(2 * 8)
    for i, block in enumerate(model.blocks):
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            assert proj.weight.std().item() == pytest.approx(residual_std, rel=0.05), i
            assert torch.all(proj.bias == 0)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(block.ln_1.weight == 1) and torch.all(block.ln_1.bias == 0)
    assert model.embed.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.output_weight() is model.embed.wte.weight


def test_tied_head_shares_storage_and_untied_head_does_not() -> None:
    tied, untied = make(), make(tie_word_embeddings=False)
    assert "lm_head.weight" not in tied.state_dict()
    assert untied.output_weight() is untied.lm_head.weight
    assert untied.output_weight().data_ptr() != untied.embed.wte.weight.data_ptr()
    idx, targets = batch(512)
    untied(idx, targets)[1].backward()
    assert untied.lm_head.weight.grad.abs().sum() > 0


def test_causality_future_tokens_do_not_change_past_logits() -> None:
    model = make().eval()
    idx, _ = batch(512)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 512
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    idx, targets = batch(512)
    plain, ckpt = make(seed=3), make(seed=3, activation_checkpointing=True)
    plain(idx, targets)[1].backward()
    ckpt(idx, targets)[1].backward()
    reference = grads(plain)
    for name, g in grads(ckpt).items():
        torch.testing.assert_close(g, reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_attention_reference_and_sdpa_models_agree() -> None:
    idx, targets = batch(512)
    a, b = make(seed=4, attention="sdpa"), make(seed=4, attention="torch")
    la, lb = a(idx, targets)[1], b(idx, targets)[1]
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)


def test_sequence_longer_than_context_is_refused() -> None:
    model = make()
    with pytest.raises(ValueError, match=r"sequence length \(129\) exceeds .* n_positions \(128\)"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_generate_samples_only_real_vocabulary() -> None:
    model = make(vocab_size=509).eval()
    with torch.no_grad():
        model.embed.wte.weight[509:] = 100.0  # would dominate sampling if padded columns leaked
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(prompt, 40, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 43) and torch.equal(out[:, :3], prompt)
    assert int(out.max()) < 509
    greedy = model.generate(prompt, 5, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 5, temperature=0))


def learnable_batch(
    g: torch.Generator, vocab: int, B: int = 16, T: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences counting up by a per-sequence stride mod vocab: the next token follows from the context."""
    start = torch.randint(0, vocab, (B, 1), generator=g)
    stride = torch.randint(1, 4, (B, 1), generator=g)
    tokens = (start + stride * torch.arange(T + 1)) % vocab  # [B, T + 1]
    return tokens[:, :-1], tokens[:, 1:]


def test_tiny_model_learns_synthetic_sequences() -> None:
    torch.manual_seed(0)
    vocab = 64
    model = GPT(get_preset("tiny", vocab_size=vocab, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    opt = build_optimizer(model, lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(120):
        idx, targets = learnable_batch(g, vocab)
        _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(vocab), rel=0.1)  # chance level at init
    assert sum(losses[-10:]) / 10 < 0.3 * losses[0], losses[::10]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_traces_for_torch_compile_without_graph_breaks(checkpointing: bool) -> None:
    model = make(vocab_size=509, activation_checkpointing=checkpointing)
    idx, targets = batch(509)
    explained = torch._dynamo.explain(model)(idx, targets)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_init_weights_is_gpt2s_and_owned_by_the_modules():
    from model.gpt2 import INIT_OWNERS, init_weights

    cfg = get_preset("tiny", vocab_size=500, n_layer=4, n_embd=128)
    a, b = GPT(cfg), GPT(cfg)
    init_weights(a, seed=3)
    init_weights(b, seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name  # the seed alone decides
    # Every parameter is initialised by exactly one owning module.
    owned = [p for m in a.modules() if isinstance(m, INIT_OWNERS) for p in m.parameters()]
    assert sorted(map(id, owned)) == sorted(id(p) for p in a.parameters())
    params = dict(a.named_parameters())
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in params.items():
        if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name
        elif name.endswith("c_proj.weight"):
            assert abs(p.std().item() - residual) < 0.1 * residual, name
        else:
            rows = p[: cfg.vocab_size] if name == "embed.wte.weight" else p
            assert abs(rows.std().item() - 0.02) < 0.002, name
    assert torch.all(params["embed.wte.weight"][cfg.vocab_size :] == 0)  # padded vocabulary rows
