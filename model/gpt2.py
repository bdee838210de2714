"""GPT-2, top to bottom: embedding, attention, MLP, block, GPT.

Read it like nanoGPT's model.py. Pre-LayerNorm blocks, learned positions, tanh-approximated GELU, output head
tied to the token embedding, GPT-2 initialisation (normal std 0.02, residual projections scaled by
1/sqrt(2 n_layer), zero biases, LayerNorm weight 1). No DeepSpeed, no ranks, no global state: parallelism is
applied from outside (``model.pipeline`` cuts stages from ``Embedding``, ``Block``, ``LayerNorm`` and the
head defined here).

Shapes: B batch, T sequence length, d = n_embd, H = n_head, hd = d / H, V = vocab_size, Vp = padded vocab,
T_past tokens already in a KV cache.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.config import GPTConfig
from model.kernels.attention import causal_attention
from model.kernels.bias_gelu import linear_bias_gelu
from model.kernels.cross_entropy import cross_entropy_from_logits, linear_cross_entropy
from model.kernels.layernorm import LayerNorm

INIT_STD = 0.02

KV = tuple[torch.Tensor, torch.Tensor]  # one block's cached keys and values, each [B, H, T_past, hd]


@torch.no_grad()
def _normal_(p: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill ``p`` with N(0, std^2) drawn in fp32 on the CPU, so the values do not depend on p's dtype,
    device or partitioning. ``generator`` None draws from torch's global generator."""
    values = torch.randn(p.shape, generator=generator, dtype=torch.float32)
    p.copy_(values.mul_(std).to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def _init_linear(linear: nn.Linear, std: float, generator: torch.Generator | None) -> None:
    _normal_(linear.weight, std, generator)
    if linear.bias is not None:
        linear.bias.zero_()


def _residual_std(config: GPTConfig) -> float:
    # GPT-2: residual projections scaled by 1/sqrt(N), N = 2 residual branches per block x n_layer blocks.
    return INIT_STD / math.sqrt(2 * config.n_layer)


def lm_logits(hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Output head: ``hidden`` ``[..., d]`` x ``weight[:vocab_size]`` ``[V, d]`` -> logits ``[..., V]``.

    Only the real vocabulary rows take part, so padded columns never reach a loss or a sampler.
    """
    return F.linear(hidden, weight[:vocab_size])


class Embedding(nn.Module):
    """Token + learned position embeddings, ``idx`` ``[B, T]`` -> ``x`` ``[B, T, d]``.

    ``wte`` has ``padded_vocab_size`` rows; the padded rows start at zero and, never indexed nor part of the
    head, stay zero. With tied embeddings ``wte.weight`` is also the output projection.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.vocab_size = config.vocab_size
        self.n_positions = config.n_positions
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: both tables N(0, 0.02^2); the padded vocabulary rows zero."""
        _normal_(self.wte.weight, INIT_STD, generator)
        _normal_(self.wpe.weight, INIT_STD, generator)
        self.wte.weight[self.vocab_size :].zero_()

    def forward(self, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """``pos``: positions ``[B, T]`` (incremental decoding; the caller checks them), else 0..T-1."""
        T = idx.size(1)
        if pos is None:
            if T > self.n_positions:
                raise ValueError(
                    f"sequence length ({T}) exceeds the model's context n_positions ({self.n_positions})"
                )
            pos = torch.arange(T, device=idx.device)  # [T]
        return self.drop(self.wte(idx) + self.wpe(pos))  # [B, T, d]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, ``[B, T, d] -> [B, T, d]``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head
        self.attn_pdrop = config.attn_pdrop
        self.impl = config.attention
        self.c_attn = nn.Linear(d, 3 * d)  # q, k, v projections in one matmul
        self.c_proj = nn.Linear(d, d)  # residual projection
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.residual_std = _residual_std(config)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: weights N(0, 0.02^2), the residual projection's scaled by 1/sqrt(2 n_layer); zero
        biases."""
        _init_linear(self.c_attn, INIT_STD, generator)
        _init_linear(self.c_proj, self.residual_std, generator)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)  # 3 x [B, T, d]
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_head, -1).transpose(1, 2)  # [B, H, T, hd]
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)  # [B, H, T, hd]
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = y.shape
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # [B, T, d]
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        dropout_p = self.attn_pdrop if self.training else 0.0
        y = causal_attention(q, k, v, dropout_p=dropout_p, impl=self.impl)  # [B, H, T, hd]
        return self._merge(y)

    def decode(self, x: torch.Tensor, past: KV | None, mask: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """Attention of T new tokens ``x`` ``[B, T, d]`` over the cached ``past`` and themselves.

        ``mask`` ``[B, 1, T, T_past + T]`` bool, True where a query may attend (built by ``GPT.decode``).
        Returns the output ``[B, T, d]`` and the keys and values of all ``T_past + T`` tokens. Always SDPA:
        the reference kernel takes no mask, and SDPA is in every torch this package supports.
        """
        q, k, v = self._heads(x)  # [B, H, T, hd]
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # [B, H, T_past + T, hd]
            v = torch.cat((past[1], v), dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        return self._merge(y), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward, ``[B, T, d] -> [B, T, 4d] -> [B, T, d]`` with tanh-GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.impl = config.bias_gelu
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)  # residual projection
        self.dropout = nn.Dropout(config.resid_pdrop)
        self.residual_std = _residual_std(config)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """As the attention's: N(0, 0.02^2), the residual projection scaled; zero biases."""
        _init_linear(self.c_fc, INIT_STD, generator)
        _init_linear(self.c_proj, self.residual_std, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = linear_bias_gelu(x, self.c_fc.weight, self.c_fc.bias, self.impl)  # [B, T, 4d]
        return self.dropout(self.c_proj(h))  # [B, T, d]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; ``[B, T, d]``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(d, eps, config.layernorm)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(d, eps, config.layernorm)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x

    def decode(self, x: torch.Tensor, past: KV | None, mask: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """``forward`` for new tokens after cached ones (see ``CausalSelfAttention.decode``)."""
        a, kv = self.attn.decode(self.ln_1(x), past, mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class LMHead(nn.Module):
    """Untied output projection (``tie_word_embeddings=False``): ``[..., d] -> [..., V]`` logits."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.vocab_size = config.vocab_size
        self.weight = nn.Parameter(torch.empty(config.padded_vocab_size, config.n_embd))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, 0.02^2); the padded vocabulary rows zero."""
        _normal_(self.weight, INIT_STD, generator)
        self.weight[self.vocab_size :].zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return lm_logits(hidden, self.weight, self.vocab_size)


# The modules that own the initialisation of their parameters (``reset_parameters(generator)``); every
# parameter of the GPT belongs to exactly one of them.
INIT_OWNERS = (Embedding, CausalSelfAttention, MLP, LayerNorm, LMHead)


@contextmanager
def _whole(module: nn.Module) -> Iterator[bool]:
    yield True


def init_weights(
    model: nn.Module,
    seed: int,
    *,
    gpt_name: Callable[[str], str] = lambda name: name,
    gathered: Callable[[nn.Module], AbstractContextManager[bool]] = _whole,
) -> None:
    """GPT-2 initialisation of ``model``, a ``GPT`` or a pipeline stage cut from its pieces.

    Each module of ``INIT_OWNERS`` re-initialises its own parameters from a generator seeded by ``seed``
    and the module's name in the plain GPT (``gpt_name`` maps a stage's module names to those), so a
    pipeline stage, a ZeRO-3 partition and the whole model all get the same values for a seed.
    ``gathered(module)`` makes the module's parameters whole for the duration and says whether this process
    writes them (ZeRO-3: gather, rank 0 writes, re-partition on exit); by default they are whole already.
    """
    for name, module in model.named_modules():
        if isinstance(module, INIT_OWNERS):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(gpt_name(name).encode()))
            with gathered(module) as write:
                if write:
                    module.reset_parameters(generator)


class GPT(nn.Module):
    """The GPT-2 language model.

    State dict: ``embed.wte.weight`` ``[Vp, d]``, ``embed.wpe.weight`` ``[n_positions, d]``,
    ``blocks.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}``,
    ``ln_f.{weight,bias}`` and, only when untied, ``lm_head.weight`` ``[Vp, d]``. Linear weights are
    ``[out, in]`` (nn.Linear). The kernel choices of the config never change this layout.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = Embedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.layernorm)
        self.lm_head = None if config.tie_word_embeddings else LMHead(config)

    def output_weight(self) -> torch.Tensor:
        """The ``[Vp, d]`` output projection: the token embedding when tied, else ``lm_head.weight``."""
        return self.embed.wte.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T]`` -> final normalised hidden states ``[B, T, d]`` (before the head)."""
        x = self.embed(idx)  # [B, T, d]
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training:
                # Keep only block inputs; recompute the block in backward. Non-reentrant: works with inputs
                # that need no grad and with autocast, and composes with torch.compile.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)  # [B, T, d]
        return self.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits and/or mean next-token loss.

        Args:
            idx: ``[B, T]`` int64 token ids, ``T <= n_positions``.
            targets: ``[B, T]`` int64, the token that follows each position of ``idx`` (already shifted, as
                nanoGPT), ``-100`` where no loss is wanted; or None.
            return_logits: with targets, also return the logits (materialises ``[B, T, V]``).
        Returns:
            ``(logits, loss)``: logits ``[B, T, V]`` (real vocabulary only) when targets is None or
            return_logits, else None; loss a scalar fp32 tensor when targets are given, else None.
        """
        x = self.hidden_states(idx)  # [B, T, d]
        weight = self.output_weight()  # [Vp, d]
        V = self.config.vocab_size
        if targets is not None and not return_logits:
            # The head and the loss together, chunked: no [B, T, V] logits (see model/kernels/cross_entropy).
            loss = linear_cross_entropy(
                x.flatten(0, 1), weight, targets.flatten(), V, self.config.cross_entropy
            )
            return None, loss
        logits = lm_logits(x, weight, V)  # [B, T, V]
        loss = None if targets is None else cross_entropy_from_logits(logits, targets)
        return logits, loss

    def decode(
        self,
        idx: torch.Tensor,
        past: list[KV] | None = None,
        keep: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, list[KV]]:
        """Incremental forward for generation (eval mode): the logits of ``idx`` ``[B, T]``, the tokens that
        follow the ``T_past`` tokens whose keys and values ``past`` holds (one per block; None: none yet).

        ``keep`` ``[B, T_past + T]`` bool is False at left padding (prompts of different lengths in one
        batch): padded tokens take no position and no real token attends to them, so each row computes
        what its unpadded tokens alone would, up to rounding. None: no padding.
        Returns logits ``[B, T, V]`` (``[B, 1, V]`` with ``last_only``) and the cache of all T_past + T.
        """
        B, T = idx.shape
        T_past = 0 if past is None else past[0][0].size(2)
        if T_past + T > self.config.n_positions:
            raise ValueError(
                f"{T_past} cached + {T} new tokens exceed the context n_positions ({self.config.n_positions})"
            )
        if keep is None:
            keep = torch.ones(B, T_past + T, dtype=torch.bool, device=idx.device)
        pos = (keep.cumsum(1) - 1).clamp(min=0)[:, T_past:]  # [B, T]: index among the row's real tokens
        keys = torch.arange(T_past + T, device=idx.device)  # [T_past + T]
        queries = keys[T_past:, None]  # [T, 1]
        # Causal over real tokens; each token also sees itself, so a padded query never has an empty row
        # (softmax over nothing is NaN, and a NaN key would poison real rows even at zero weight).
        mask = (keys <= queries) & (keep[:, None, None, :] | (keys == queries))  # [B, 1, T, T_past + T]
        x = self.embed(idx, pos)  # [B, T, d]
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block.decode(x, None if past is None else past[i], mask)
            cache.append(kv)
        x = self.ln_f(x[:, -1:] if last_only else x)
        return lm_logits(x, self.output_weight(), self.config.vocab_size), cache

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        keep: torch.Tensor | None = None,
        stop: Callable[[torch.Tensor], bool] | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` ``[B, T0]``; returns ``[B, T0 + max_new_tokens]``
        (fewer when ``stop``, called with the sequences so far after each new token, returns True).

        With a KV cache: one forward over the prompt, then one token per step, so a step's cost does not
        grow with the length (but for attention over the cache). Past n_positions tokens the window
        slides: each further step re-reads the last n_positions tokens. ``keep`` ``[B, T0]``: False at left
        padding (see ``decode``). Sampling as ``sample``: temperature 0 is greedy.
        """
        n = self.config.n_positions
        keep = torch.ones_like(idx, dtype=torch.bool) if keep is None else keep
        logits, cache = self.decode(idx[:, -n:], keep=keep[:, -n:], last_only=True)
        for step in range(max_new_tokens):
            next_id = sample(logits[:, -1].float(), temperature, top_k, top_p, generator)  # [B, 1]
            idx = torch.cat((idx, next_id), dim=1)
            keep = F.pad(keep, (0, 1), value=True)
            if step == max_new_tokens - 1 or (stop is not None and stop(idx)):
                break
            if cache[0][0].size(2) < n:
                logits, cache = self.decode(next_id, cache, keep, last_only=True)
            else:  # the context is full: slide the window
                logits, cache = self.decode(idx[:, -n:], keep=keep[:, -n:], last_only=True)
        return idx


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids ``[B, 1]`` from ``logits`` ``[B, V]``: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the ``top_k`` likeliest tokens, then to the smallest set of
    likeliest tokens whose probability reaches ``top_p`` (nucleus sampling; 1.0 or None: no limit)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the likelier tokens; 0 for the likeliest
        outside = before >= top_p
        outside[:, 0] = False  # the likeliest token always stays
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = logits.scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # [B, 1]
