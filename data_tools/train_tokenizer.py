"""Train a byte-level BPE tokenizer (GPT-2's scheme) on the cleaned corpus.

The result is saved so that `transformers.AutoTokenizer.from_pretrained(dir)` loads it offline, with
`<|endoftext|>` as the end-of-document (and bos/unk) token and the fill-in-the-middle sentinels
(`<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, `<fim_pad>`: data_tools.fim) as special tokens, ids 0-4.
Documents of the validation split (by content hash, as in preprocess) are held out: the report gives
characters per token on them.

    codeparrot-train-tokenizer --output tok/                # the standard library, vocabulary 32,768
    codeparrot-train-tokenizer --input data/*.jsonl.gz --vocab-size 50000 --output tok/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_tools import cli
from data_tools.encode import encode_one, pieces
from data_tools.errors import DataError
from data_tools.fim import FIM_TOKENS
from data_tools.indexed_dataset import token_dtype
from data_tools.parallel import CleanConfig, Cleaner, cleaned_batches, is_valid_split, make_executor
from data_tools.sources import Problems, SourceConfig, iter_batches, iter_records, problems_summary

logger = logging.getLogger(__name__)

EOD_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 32768
HELD_OUT_MAX_CHARS = 5_000_000
SPECIAL_TOKENS = (EOD_TOKEN, *FIM_TOKENS)  # ids 0-4, reserved before any merge
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte-level alphabet and the special tokens
MAX_VOCAB_SIZE = 2**31 - 1  # the largest id an int32 shard holds (uint16 shards stop at 65,500 ids)


def vocab_size_problem(vocab_size: int, option: str = "--vocab-size") -> str | None:
    """Why `vocab_size` cannot be trained and stored, or None. Below the byte alphabet the trainer would
    silently return a larger vocabulary; above int32 no shard dtype holds the ids."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        return (
            f"{option} ({vocab_size}) must be between {MIN_VOCAB_SIZE} (the 256 bytes of the byte-level "
            f"alphabet and the {len(SPECIAL_TOKENS)} special tokens) and {MAX_VOCAB_SIZE:,} (the largest id "
            "an int32 shard holds); 32768 is the usual choice"
        )
    return None


def new_bpe_trainer(vocab_size: int, min_frequency: int = 2, show_progress: bool = True):
    """An empty byte-level BPE tokenizer and its trainer (all 256 bytes in the initial alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    return tokenizer, trainer


def save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    """Save for `AutoTokenizer.from_pretrained(out_dir)` (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOD_TOKEN,
        eos_token=EOD_TOKEN,
        unk_token=EOD_TOKEN,
        additional_special_tokens=list(FIM_TOKENS),
        model_max_length=1024,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))


def tokenizer_sha256(tok_dir: Path) -> str:
    """Hash of tokenizer.json: what shards, checkpoints and resumes compare."""
    return hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()


def load_tokenizer(tok_dir: str | Path):
    """The `tokenizers.Tokenizer` saved in `tok_dir`, and its end-of-document id."""
    from tokenizers import Tokenizer

    path = Path(tok_dir) / "tokenizer.json"
    if not path.exists():
        raise DataError(
            f"{path}: no tokenizer here. Train one with `codeparrot-train-tokenizer --output {tok_dir}`."
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise DataError(
            f"{path}: not a tokenizer file the tokenizers library can read ({e}). Pass the directory of a "
            f"tokenizer saved by `codeparrot-train-tokenizer`, or train one with `codeparrot-train-tokenizer "
            f"--output {tok_dir}`."
        ) from e
    eod = tokenizer.token_to_id(EOD_TOKEN)
    if eod is None:
        raise DataError(f"{path}: the tokenizer has no {EOD_TOKEN} token, needed to separate documents.")
    return tokenizer, eod


@dataclasses.dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer directory's tokenizer with what shards, manifests and training need of it: its
    end-of-document id, the sha256 of tokenizer.json, the vocabulary and the shards' token dtype."""

    dir: Path
    tokenizer: Any  # tokenizers.Tokenizer
    eod: int
    sha256: str
    vocab_size: int
    dtype: np.dtype

    @classmethod
    def load(cls, tok_dir: Path) -> LoadedTokenizer:
        tokenizer, eod = load_tokenizer(tok_dir)
        vocab = tokenizer.get_vocab_size()
        return cls(tok_dir, tokenizer, eod, tokenizer_sha256(tok_dir), vocab, token_dtype(vocab))


def chars_per_token(tokenizer: Any, texts: Sequence[str]) -> float | None:
    if not texts:
        return None
    n_tokens = sum(len(encode_one(tokenizer, p, "int64")) for t in texts for p in pieces(t))
    return sum(map(len, texts)) / max(n_tokens, 1)


def train(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    held_out: Sequence[str] = (),
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train on `texts`, save to `out_dir`, and return the report (vocabulary, held-out chars/token).
    Long texts reach the trainer in pieces cut where the pre-tokenizer cuts (the same word counts, in
    bounded memory: data_tools.encode)."""
    if problem := vocab_size_problem(vocab_size, "vocab_size"):
        raise DataError(problem)
    tokenizer, trainer = new_bpe_trainer(vocab_size, show_progress=show_progress)
    counted = {"docs": 0, "chars": 0}

    def counting(it: Iterable[str]) -> Iterator[str]:
        for t in it:
            counted["docs"] += 1
            counted["chars"] += len(t)
            yield from pieces(t)

    tokenizer.train_from_iterator(counting(texts), trainer)
    if counted["docs"] == 0:
        raise DataError("no documents to train the tokenizer on: the corpus is empty after cleaning.")
    save_tokenizer(tokenizer, out_dir)
    cpt = chars_per_token(tokenizer, held_out)
    report = {
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": vocab_size,
        "eod_token": EOD_TOKEN,
        "eod_id": tokenizer.token_to_id(EOD_TOKEN),
        "train_docs": counted["docs"],
        "train_chars": counted["chars"],
        "held_out_docs": len(held_out),
        "held_out_chars_per_token": round(cpt, 4) if cpt else None,
        "sha256": tokenizer_sha256(out_dir),
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "tokenizer: %d ids, trained on %d docs; held-out chars/token %s -> %s",
        report["vocab_size"],
        counted["docs"],
        report["held_out_chars_per_token"],
        out_dir,
    )
    return report


def train_on_corpus(
    sources: SourceConfig,
    clean: CleanConfig,
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    workers: int = 1,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Clean and deduplicate the corpus (in parallel) and train on its training split; validation-split
    documents are held out for the chars/token figure."""
    if problem := vocab_size_problem(vocab_size):
        raise DataError(problem)
    cli.refuse_writing_inputs(sources.inputs, out_dir, is_dir=True)
    cli.prepare_output_dir(out_dir)
    problems = Problems()
    cleaner = Cleaner(clean)

    def documents(executor) -> Iterator[tuple[str, int]]:
        batches = iter_batches(iter_records(sources, problems), 64, 1_000_000)
        for _, kept, hashes in cleaned_batches(
            executor, batches, cleaner, sources, problems, 2 * max(workers, 1)
        ):
            yield from zip((doc.text for doc in kept), hashes, strict=True)

    executor = make_executor(workers)
    try:
        return train_on_documents(
            documents(executor),
            clean.valid_ratio,
            out_dir,
            vocab_size,
            show_progress,
            cleaning=lambda: cleaner.to_dict(problems),
        )
    finally:
        executor.shutdown()


def train_on_documents(
    documents: Iterable[tuple[str, int]],
    valid_ratio: float,
    out_dir: Path,
    vocab_size: int,
    show_progress: bool,
    cleaning: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Train on the cleaned corpus given as (text, content hash) in corpus order: the training split
    (by hash) is trained on, validation-split texts are held out for the chars/token figure. The report,
    with `cleaning()` (called once the documents are consumed) under "cleaning", is returned and saved
    as out_dir/training_report.json."""
    held_out: list[str] = []
    held_chars = 0

    def train_texts() -> Iterator[str]:
        nonlocal held_chars
        for text, h in documents:
            if not is_valid_split(h, valid_ratio):
                yield text
            elif held_chars < HELD_OUT_MAX_CHARS:
                held_out.append(text)
                held_chars += len(text)

    report = train(train_texts(), out_dir, vocab_size, held_out, show_progress)
    report["cleaning"] = cleaning()
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.tool_parser(
        "codeparrot-train-tokenizer",
        __doc__,
        example="codeparrot-train-tokenizer --input clean.jsonl.zst --output tokenizer --vocab-size 32768",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory for the tokenizer")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    cli.add_common_args(parser)
    args = parser.parse_args(argv)

    def job() -> None:
        report = train_on_corpus(
            cli.source_config(args),
            cli.clean_config(args),
            args.output,
            args.vocab_size,
            args.workers,
            show_progress=not args.quiet,
        )
        bad_input = report["cleaning"]["bad_input"]
        if bad_input["counts"]:
            logger.warning(
                "%s; details in %s", problems_summary(bad_input), args.output / "training_report.json"
            )

    return cli.run(job, args)


if __name__ == "__main__":
    sys.exit(main())
