"""Code completion with a trained GPT: batched sampling with the KV cache, stop sequences, a console script.

`complete` returns, for each prompt, n completions: the text generated after the prompt, cut at the first
stop sequence (CodeParrot's: a new top-level block starts) or at the end-of-document token. Rows of several
prompts and samples share a batch, left-padded to the longest prompt; the padding is masked (see
`model.gpt2.GPT.decode`), so a row completes as its prompt alone would (greedy: the same tokens, up to
float rounding between batch shapes).

    codeparrot-generate runs/small "def fibonacci(n):" -n 4 --temperature 0.2
    codeparrot-generate runs/small --file prompt.py --max-new-tokens 128 --no-stop
    echo "import os" | codeparrot-generate exported/ --temperature 0
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch

from evaluation.sampling import check_sampling
from model.gpt2 import GPT

logger = logging.getLogger(__name__)

# HuggingFace's CodeParrot HumanEval stops: a new class, function, comment, if-block or print at column 0.
CODEPARROT_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
EOD_TOKEN = "<|endoftext|>"
LongPrompts = Literal["refuse", "keep-end"]


def truncate(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (without) the earliest occurrence of any of ``stop``; whole when none occurs."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class _Rows:
    """Which rows of a batch are finished (an end-of-document token or a stop sequence), and their text."""

    def __init__(self, tokenizer: Any, prompt_len: int, stop: Sequence[str], eod_id: int | None) -> None:
        self.tokenizer, self.prompt_len, self.stop, self.eod_id = tokenizer, prompt_len, stop, eod_id

    def text(self, tokens: list[int]) -> str:
        """The completion of one row: its new tokens up to the end-of-document token, decoded, truncated."""
        if self.eod_id is not None and self.eod_id in tokens:
            tokens = tokens[: tokens.index(self.eod_id)]
        return truncate(self.tokenizer.decode(tokens), self.stop)

    def finished(self, tokens: list[int]) -> bool:
        if self.eod_id is not None and self.eod_id in tokens:
            return True
        text = self.tokenizer.decode(tokens)
        return any(s in text for s in self.stop)

    def all_finished(self, idx: torch.Tensor) -> bool:
        """``GPT.generate``'s stop callback: True once every row of ``idx`` ``[B, T0 + t]`` is finished."""
        return all(self.finished(row) for row in idx[:, self.prompt_len :].tolist())


def _fit_context(encoded: list[list[int]], context: int, long_prompts: LongPrompts) -> list[list[int]]:
    """Prompts of at most ``context`` tokens: a longer one is refused, or keeps its last ``context``
    tokens with a warning (the model reads no further back; HumanEval uses this on small models)."""
    long = [i for i, ids in enumerate(encoded) if len(ids) > context]
    if not long:
        return encoded
    lengths = ", ".join(f"prompt {i}: {len(encoded[i])} tokens" for i in long[:5])
    if long_prompts == "refuse":
        raise ValueError(
            f"{lengths}: longer than the model's context of {context} tokens (n_positions), so the model "
            f"cannot read it whole. Shorten the prompt to at most {context} tokens"
        )
    logger.warning(
        "%d prompt(s) longer than the model's context of %d tokens (%s): each keeps only its last %d tokens",
        len(long),
        context,
        lengths,
        context,
    )
    return [ids[-context:] for ids in encoded]


def complete(
    model: GPT,
    tokenizer: Any,
    prompts: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int | None = None,
    stop: Sequence[str] = CODEPARROT_STOPS,
    seed: int = 0,
    batch_size: int = 16,
    eod_id: int | None = None,
    long_prompts: LongPrompts = "refuse",
) -> list[list[str]]:
    """``n`` completions of each prompt (``result[i][j]``: sample j of prompt i), without the prompt.

    A completion ends at the end-of-document token ``eod_id`` (None: the tokenizer's ``<|endoftext|>``,
    if it has one) or is cut before the first of ``stop``; a batch ends when all its rows have ended, else
    after ``max_new_tokens``. Temperature 0 is greedy (the n samples are then equal). The draws depend only on
    ``seed`` and ``batch_size``. An empty prompt starts from the end-of-document token, as a document does.
    The model runs in eval mode on its own device; ``tokenizer`` is a ``tokenizers.Tokenizer``. A prompt
    longer than the model's context is refused, or with ``long_prompts="keep-end"`` cut to its last
    n_positions tokens with a warning.

    Raises:
        ValueError: sampling settings out of range (``check_sampling``), or a prompt longer than the
            context under ``long_prompts="refuse"``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n ({n}) and batch_size ({batch_size}) must be at least 1")
    check_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, top_k=top_k)
    eod_id = tokenizer.token_to_id(EOD_TOKEN) if eod_id is None else eod_id
    encoded = [tokenizer.encode(p).ids or ([] if eod_id is None else [eod_id]) for p in prompts]
    if not all(encoded):
        raise ValueError(f"empty prompt and no end-of-document token ({EOD_TOKEN}) to start from")
    encoded = _fit_context(encoded, model.config.n_positions, long_prompts)
    # Rows (prompt, sample), shortest prompts first so that a batch holds little padding.
    rows = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda r: len(encoded[r[0]]))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = [[""] * n for _ in prompts]
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            T0 = max(len(encoded[i]) for i, _ in batch)
            idx = torch.zeros(len(batch), T0, dtype=torch.long)
            keep = torch.zeros(len(batch), T0, dtype=torch.bool)
            for r, (i, _) in enumerate(batch):  # left padding: each prompt ends at column T0 - 1
                ids = encoded[i]
                idx[r, T0 - len(ids) :] = torch.tensor(ids)
                keep[r, T0 - len(ids) :] = True
            state = _Rows(tokenizer, T0, stop, eod_id)
            tokens = model.generate(
                idx.to(device),
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                keep=keep.to(device),
                stop=state.all_finished,
            )
            for (i, j), row in zip(batch, tokens[:, T0:].tolist(), strict=True):
                out[i][j] = state.text(row)
    finally:
        model.train(was_training)
    return out


def _read_prompt(args: argparse.Namespace) -> str:
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    if args.prompt is not None and args.prompt != "-":
        return args.prompt
    if sys.stdin.isatty():
        logger.info("reading the prompt from stdin (end with Ctrl-D)")
    return sys.stdin.read()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="codeparrot-generate",
        description="Complete code with a trained model: prints the prompt and each completion.",
    )
    parser.add_argument("model", help="a training save_dir or an exported transformers directory")
    parser.add_argument("prompt", nargs="?", help="the prompt ('-' or none: read stdin)")
    parser.add_argument("--file", help="read the prompt from this file")
    parser.add_argument("--tag", help="checkpoint tag of a save_dir (default: the latest)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("-n", type=int, default=1, help="completions to sample (default: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.2, help="0: greedy (default: 0.2)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--stop", nargs="+", metavar="S", help="stop sequences (default: CodeParrot's, a new top-level block)"
    )
    group.add_argument("--no-stop", action="store_true", help="no stop sequences: run to the token limit")
    args = parser.parse_args(argv)
    if args.prompt is not None and args.file is not None:
        parser.error("give the prompt as an argument or with --file, not both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``codeparrot-generate MODEL [PROMPT]``: print the prompt followed by each of n completions; a bad
    setting, model path or prompt ends in one line on stderr and exit status 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return _generate(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        print(f"codeparrot-generate: error: {e}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from evaluation.checkpoint import load_model

    check_sampling(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, top_k=args.top_k
    )
    prompt = _read_prompt(args)
    loaded = load_model(args.model, tag=args.tag, device=args.device)
    logger.info("model: %s", loaded.source)
    stop: Sequence[str] = () if args.no_stop else tuple(args.stop or CODEPARROT_STOPS)
    [completions] = complete(
        loaded.model,
        loaded.tokenizer,
        [prompt],
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=stop,
        seed=args.seed,
        batch_size=args.batch_size,
        eod_id=loaded.eod_id,
    )
    for j, text in enumerate(completions):
        if args.n > 1:
            print(f"# ---- completion {j + 1}/{args.n} ----")
        print(prompt + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
