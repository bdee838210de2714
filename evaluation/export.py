"""Export a training checkpoint as a transformers GPT-2 directory.

    codeparrot-export runs/train exported/                     # the checkpoint `latest` names
    codeparrot-export runs/train exported/ --tag global_step400 --overwrite

Writes config.json and model.safetensors (``GPT2LMHeadModel``, fp32, padded vocabulary rows dropped), the
tokenizer the data was made with (``PreTrainedTokenizerFast``: tokenizer.json and tokenizer_config.json,
with the end-of-document token as bos, eos and unk and the fill-in-the-middle sentinels, where the tokenizer
has them, as additional special tokens) and generation_config.json (CodeParrot's sampling
defaults, eos and pad = end-of-document). ``AutoModelForCausalLM``, ``AutoTokenizer`` and
``pipeline("text-generation")`` load the directory offline. The way back is ``train.init_from``: a run that
starts from an exported (or any transformers GPT-2) directory's weights.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from data_tools.fim import FIM_TOKENS
from evaluation.checkpoint import CheckpointError, Loaded, load_model

logger = logging.getLogger(__name__)

# CodeParrot's sampling settings for code completion (the HumanEval evaluation of codeparrot uses the same).
GENERATION_DEFAULTS: dict[str, Any] = {
    "do_sample": True,
    "temperature": 0.2,
    "top_p": 0.95,
    "max_new_tokens": 256,
}


def save_hf_tokenizer(loaded: Loaded, out_dir: Path) -> None:
    """The model's tokenizer as a ``PreTrainedTokenizerFast`` (end-of-document as bos, eos and unk; the
    fill-in-the-middle sentinels it has as additional special tokens, so that transformers users build the
    infilling prompt of ``data_tools.fim.infill_prompt`` and decode without them)."""
    from transformers import PreTrainedTokenizerFast

    eod = loaded.tokenizer.id_to_token(loaded.eod_id)
    sentinels = [t for t in FIM_TOKENS if loaded.tokenizer.token_to_id(t) is not None]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=loaded.tokenizer,
        bos_token=eod,
        eos_token=eod,
        unk_token=eod,
        additional_special_tokens=sentinels,
        model_max_length=loaded.config.n_positions,
    )
    hf.save_pretrained(str(out_dir))
    # transformers 5 records its new class name (TokenizersBackend), which 4.x cannot load, and the extra
    # special tokens as a list under "extra_special_tokens", where 4.x expects a dict of named tokens; both
    # load this class, and both read "additional_special_tokens" (5 renames it on load).
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if extra:
        config["additional_special_tokens"] = extra
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def export(
    ckpt_dir: str | Path, out_dir: str | Path, tag: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``ckpt_dir``'s checkpoint ``tag`` (default: latest) to ``out_dir`` as a transformers GPT-2
    directory; files of the same names are replaced only with ``overwrite``. Returns ``out_dir``.

    Raises:
        CheckpointError: the checkpoint cannot be loaded, ``out_dir`` is not empty without ``overwrite``,
            or it cannot be written (read-only, full): what this call created is removed first.
    """
    from transformers import GenerationConfig

    from model.hf import to_hf

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise CheckpointError(
            f"{out_dir} exists and is not empty: choose a new directory, or pass --overwrite to write over it"
        )
    loaded = load_model(ckpt_dir, tag)
    eod = loaded.eod_id
    hf_model = to_hf(loaded.model, bos_token_id=eod, eos_token_id=eod)
    hf_model.generation_config = GenerationConfig(
        bos_token_id=eod, eos_token_id=eod, pad_token_id=eod, **GENERATION_DEFAULTS
    )

    def write() -> None:
        hf_model.save_pretrained(str(out_dir), safe_serialization=True)
        save_hf_tokenizer(loaded, out_dir)

    _write(out_dir, write)
    logger.info("exported %s to %s", loaded.source, out_dir)
    return out_dir


def _write(out_dir: Path, write: Callable[[], object]) -> None:
    """Create ``out_dir`` and run ``write``; if it fails (read-only or full disk), remove what this call
    created (the directories it made, the files that were not there before) and raise one CheckpointError.
    """
    missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    before = set(out_dir.iterdir()) if out_dir.is_dir() else set()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write()
    except Exception as e:  # noqa: BLE001 - safetensors' and transformers' write errors are not OSErrors
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        else:
            for path in set(out_dir.iterdir()) - before:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(
            f"could not write the export to {out_dir}: {reason}. Nothing it wrote was left behind; export "
            "to a writable directory with room for the model (about 4 bytes per parameter)"
        ) from e


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(
        prog="codeparrot-export",
        description=__doc__,
        example="codeparrot-export runs/demo/train runs/demo/hf",
    )
    p.add_argument("ckpt_dir", help="a training train.save_dir (run_config.json, latest, global_stepN/)")
    p.add_argument("out_dir", help="the transformers directory to write (new or empty)")
    p.add_argument(
        "--tag", help="checkpoint tag to export, e.g. global_step400 (default: the one `latest` names)"
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty out_dir")
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = export(args.ckpt_dir, args.out_dir, args.tag, args.overwrite)
    except CheckpointError as e:
        print(f"codeparrot-export: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
