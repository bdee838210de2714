"""Code completion and infilling with a trained GPT: batched sampling with the KV cache, stop sequences, a
console script.

`complete` returns, for each prompt, n completions: the text generated after the prompt, cut at the first
stop sequence (CodeParrot's: a new top-level block starts) or at the end-of-document token. Rows of several
prompts and samples share a batch, left-padded to the longest prompt; the padding is masked (see
`model.gpt2.GPT.decode`), so a row completes as its prompt alone would (greedy: the same tokens, up to
float rounding between batch shapes).

`infill` returns, for each (prefix, suffix), n middles: the model reads the PSM prompt
`<fim_prefix>prefix<fim_suffix>suffix<fim_middle>` (data_tools.fim.infill_prompt, the layout it was trained
on) and writes the middle, which ends where it emits the end-of-document token or any fill-in-the-middle
sentinel. It samples as `complete` does (the same batching), with no stop sequences unless asked.

    codeparrot-generate runs/small "def fibonacci(n):" -n 4 --temperature 0.2
    codeparrot-generate runs/small --file prompt.py --max-new-tokens 128 --no-stop
    echo "import os" | codeparrot-generate exported/ --temperature 0
    codeparrot-generate exported/ --file before.py --suffix-file after.py --temperature 0   # the middle
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch

from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from data_tools.errors import DataError
from data_tools.fim import FimIds, fim_ids, infill_prompt
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
    """Which rows of a batch are finished (an end token or a stop sequence), and their text."""

    def __init__(self, tokenizer: Any, prompt_len: int, stop: Sequence[str], end_ids: frozenset[int]) -> None:
        self.tokenizer, self.prompt_len, self.stop, self.end_ids = tokenizer, prompt_len, stop, end_ids

    def text(self, tokens: list[int]) -> str:
        """The completion of one row: its new tokens up to the first end token, decoded, truncated."""
        end = next((i for i, t in enumerate(tokens) if t in self.end_ids), len(tokens))
        return truncate(self.tokenizer.decode(tokens[:end]), self.stop)

    def finished(self, tokens: list[int]) -> bool:
        if not self.end_ids.isdisjoint(tokens):
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
    sampling = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    _check(batch_size=batch_size, **sampling)
    eod_id = tokenizer.token_to_id(EOD_TOKEN) if eod_id is None else eod_id
    encoded = [tokenizer.encode(p).ids or ([] if eod_id is None else [eod_id]) for p in prompts]
    if not all(encoded):
        raise ValueError(f"empty prompt and no end-of-document token ({EOD_TOKEN}) to start from")
    encoded = _fit_context(encoded, model.config.n_positions, long_prompts)
    ends = frozenset(() if eod_id is None else (eod_id,))
    return _sample(
        model, tokenizer, encoded, stop=stop, end_ids=ends, seed=seed, batch_size=batch_size, **sampling
    )


def infill(
    model: GPT,
    tokenizer: Any,
    prefixes: list[str],
    suffixes: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 16,
    eod_id: int | None = None,
    long_prompts: LongPrompts = "refuse",
    where: str = "the model",
) -> list[list[str]]:
    """``n`` middles between each ``prefixes[i]`` and ``suffixes[i]`` (``result[i][j]``: sample j of pair i).

    The prompt is the PSM layout of ``data_tools.fim.infill_prompt``; a middle ends at the end-of-document
    token ``eod_id`` (None: the tokenizer's ``<|endoftext|>``) or at any fill-in-the-middle sentinel, or is
    cut before the first of ``stop`` (none by default: a middle may well hold a new ``def``). Sampling,
    batching and seeds as ``complete``. A prompt longer than the model's context is refused, or with
    ``long_prompts="keep-end"`` cut with a warning, from the end of the suffix and then from the start of
    the prefix (what training cuts from a document too long for its sample), to leave room for the middle:
    ``max_new_tokens`` tokens, or half the context if that is less.

    Raises:
        DataError: the tokenizer has no sentinels (``data_tools.fim.fim_ids``, naming ``where``).
        ValueError: as ``complete``, or ``prefixes`` and ``suffixes`` of different lengths.
    """
    if len(prefixes) != len(suffixes):
        raise ValueError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes: give one suffix per prefix")
    sentinels = fim_ids(tokenizer, where)
    sampling = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    _check(batch_size=batch_size, **sampling)
    eod_id = tokenizer.token_to_id(EOD_TOKEN) if eod_id is None else eod_id
    encoded = [tokenizer.encode(infill_prompt(p, s)).ids for p, s in zip(prefixes, suffixes, strict=True)]
    context = model.config.n_positions
    if long_prompts == "refuse":
        _fit_context(encoded, context, "refuse")
    else:
        limit = context - min(max_new_tokens, context // 2)
        long = [i for i, ids in enumerate(encoded) if len(ids) > limit]
        if long:
            logger.warning(
                "%d infilling prompt(s) longer than %d tokens (the context of %d less room for the middle): "
                "cut from the end of the suffix, then from the start of the prefix",
                len(long),
                limit,
                context,
            )
        for i in long:
            encoded[i] = _cut_infill(tokenizer, prefixes[i], suffixes[i], sentinels, limit)
    ends = frozenset(
        {sentinels.prefix, sentinels.middle, sentinels.suffix, sentinels.pad} | ({eod_id} - {None})
    )
    return _sample(
        model, tokenizer, encoded, stop=stop, end_ids=ends, seed=seed, batch_size=batch_size, **sampling
    )


def _cut_infill(tokenizer: Any, prefix: str, suffix: str, sentinels: FimIds, limit: int) -> list[int]:
    """The PSM prompt in ``limit`` tokens (at least the three sentinels). The tokenizer splits at special
    tokens before anything else, so prefix and suffix encoded alone give the tokens they have in the
    prompt."""
    p, s = tokenizer.encode(prefix).ids, tokenizer.encode(suffix).ids
    excess = len(p) + len(s) + 3 - limit
    cut = min(max(excess, 0), len(s))
    s, excess = s[: len(s) - cut], excess - cut
    p = p[max(excess, 0) :]
    return [sentinels.prefix, *p, sentinels.suffix, *s, sentinels.middle]


def _check(
    *, n: int, batch_size: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int | None
) -> None:
    if n < 1 or batch_size < 1:
        raise ValueError(f"n ({n}) and batch_size ({batch_size}) must be at least 1")
    check_sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, top_k=top_k)


def _sample(
    model: GPT,
    tokenizer: Any,
    encoded: list[list[int]],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    stop: Sequence[str],
    end_ids: frozenset[int],
    seed: int,
    batch_size: int,
) -> list[list[str]]:
    """``n`` continuations of each token prompt of ``encoded``, each cut at its first of ``end_ids`` and
    before its first of ``stop``: the batched sampling ``complete`` and ``infill`` share."""
    # Rows (prompt, sample), shortest prompts first so that a batch holds little padding.
    rows = sorted(((i, j) for i in range(len(encoded)) for j in range(n)), key=lambda r: len(encoded[r[0]]))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = [[""] * n for _ in encoded]
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
            state = _Rows(tokenizer, T0, stop, end_ids)
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


def _read_suffix(args: argparse.Namespace) -> str | None:
    """The text after the cursor (--suffix or --suffix-file), or None: complete rather than infill."""
    if args.suffix_file is not None:
        with open(args.suffix_file, encoding="utf-8") as f:
            return f.read()
    return args.suffix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="codeparrot-generate",
        example="codeparrot-generate runs/demo/hf 'def fibonacci(n):' --max-new-tokens 64 --temperature 0\n"
        "codeparrot-generate runs/demo/hf $'def add(a, b):\\n    ' --suffix $'\\n\\nprint(add(1, 2))'",
        description="Complete code with a trained model: prints the prompt and each completion. With a "
        "suffix, fill in the middle: the prompt is the text before the cursor, the suffix the text after it, "
        "and each middle is printed.",
    )
    parser.add_argument("model", help="a training save_dir or an exported transformers directory")
    parser.add_argument("prompt", nargs="?", help="the prompt ('-' or none: read stdin)")
    parser.add_argument("--file", help="read the prompt from this file")
    suffix = parser.add_mutually_exclusive_group()
    suffix.add_argument("--suffix", metavar="TEXT", help="infill: the text after the cursor")
    suffix.add_argument(
        "--suffix-file", metavar="PATH", help="infill: read the text after the cursor from here"
    )
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
        "--stop",
        nargs="+",
        metavar="S",
        help="stop sequences (default: CodeParrot's, a new top-level block; none when infilling)",
    )
    group.add_argument("--no-stop", action="store_true", help="no stop sequences: run to the token limit")
    args = parser.parse_args(argv)
    if args.prompt is not None and args.file is not None:
        parser.error("give the prompt as an argument or with --file, not both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``codeparrot-generate MODEL [PROMPT]``: print the prompt followed by each of n completions, or with
    ``--suffix``/``--suffix-file`` each of n middles; a bad setting, model path, prompt or a tokenizer
    without the fill-in-the-middle sentinels ends in one line on stderr and exit status 2."""
    args = parse_args(argv)
    setup_logging()
    try:
        return _generate(args)
    except (ValueError, OSError, DataError) as e:  # CheckpointError is a ValueError
        print(f"codeparrot-generate: error: {e}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from evaluation.checkpoint import load_model

    check_sampling(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, top_k=args.top_k
    )
    suffix = _read_suffix(args)
    prompt = _read_prompt(args)
    loaded = load_model(args.model, tag=args.tag, device=args.device)
    logger.info("model: %s", loaded.source)
    sampling = dict(
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=args.batch_size,
        eod_id=loaded.eod_id,
    )
    if suffix is not None:
        stop: Sequence[str] = () if args.no_stop else tuple(args.stop or ())
        [middles] = infill(
            loaded.model, loaded.tokenizer, [prompt], [suffix], stop=stop, where=args.model, **sampling
        )
        _print(middles, "middle")
        return 0
    stop = () if args.no_stop else tuple(args.stop or CODEPARROT_STOPS)
    [completions] = complete(loaded.model, loaded.tokenizer, [prompt], stop=stop, **sampling)
    _print([prompt + text for text in completions], "completion")
    return 0


def _print(texts: list[str], what: str) -> None:
    for j, text in enumerate(texts):
        if len(texts) > 1:
            print(f"# ---- {what} {j + 1}/{len(texts)} ----")
        print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
