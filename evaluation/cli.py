"""codeparrot-eval: HumanEval pass@k, HumanEval infilling and validation perplexity of a trained model.

    codeparrot-eval humaneval MODEL --out DIR [-n 200] [--k 1 10 100] [--problems 20 | 0,5,HumanEval/7]
    codeparrot-eval infill MODEL --out DIR [--mode single|multi|both] [--per-problem 3] [--problems 20]
    codeparrot-eval perplexity MODEL --data DATA_DIR [--split valid] [--max-batches 50]

MODEL is anything `evaluation.checkpoint.load_model` accepts (a training checkpoint or an exported model).
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib

from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from data_tools.errors import DataError
from evaluation.infill import DEFAULT_PER_PROBLEM
from evaluation.sampling import check_sampling
from evaluation.sandbox import SandboxUnavailable

log = logging.getLogger(__name__)

UNSAFE_HELP = (
    "run candidate programs even where the sandbox cannot isolate them (no Linux namespaces: neither root "
    "nor unprivileged user namespaces). DANGEROUS: this gives up the whole sandbox but its rlimits and "
    "timeout. Generated code can then open network connections, read and write every file its uid may, "
    "and leave processes behind. As root each program runs under a fresh unprivileged uid (a fork bomb "
    "stops at its process limit, kill(-1) reaches only its own processes); as any other user it runs as "
    "you: it can read your files, kill your other processes, and a fork bomb counts against your own "
    "process limit. Only for code you would run yourself"
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="codeparrot-eval",
        description=__doc__.splitlines()[0],
        example="codeparrot-eval perplexity runs/demo/train --data runs/demo/data\n"
        "codeparrot-eval humaneval runs/demo/hf --out runs/demo/humaneval -n 20 --k 1 10",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    he = sub.add_parser(
        "humaneval",
        help="pass@k on the 164 HumanEval problems (resumable)",
        example="codeparrot-eval humaneval runs/demo/hf --out runs/demo/humaneval -n 20 --k 1 10",
    )
    he.add_argument("model", help="checkpoint directory or exported model")
    he.add_argument("--tag", help="checkpoint tag (default: the latest)")
    he.add_argument("--out", required=True, help="output directory (samples.jsonl, results.json); resumes")
    he.add_argument("-n", "--num-samples", type=int, default=200, help="samples per problem (default 200)")
    he.add_argument("--k", type=int, nargs="+", default=[1, 10, 100], help="pass@k for these k <= n")
    he.add_argument("--problems", help="the first N problems, or comma-separated ids (3,HumanEval/7)")
    he.add_argument("--temperature", type=float, default=0.2)
    he.add_argument("--top-p", type=float, default=0.95)
    he.add_argument("--max-new-tokens", type=int, default=256)
    he.add_argument("--batch-size", type=int, default=16, help="sequences per generation forward pass")
    he.add_argument("--seed", type=int, default=0)
    he.add_argument("--workers", type=int, default=4, help="candidate programs run in parallel")
    he.add_argument("--timeout", type=float, default=3.0, help="seconds of wall clock per candidate")
    he.add_argument("--device", default="cpu")
    he.add_argument("--unsafe-no-isolation", action="store_true", help=UNSAFE_HELP)
    he.set_defaults(func=humaneval_command)

    fi = sub.add_parser(
        "infill",
        help="single- and multi-line infilling of HumanEval's solutions: pass rate, exact match",
        example="codeparrot-eval infill runs/demo/hf --out runs/demo/infill --problems 20",
    )
    fi.add_argument("model", help="checkpoint directory or exported model")
    fi.add_argument("--tag", help="checkpoint tag (default: the latest)")
    fi.add_argument("--out", required=True, help="output directory (samples.jsonl, results.json); resumes")
    fi.add_argument("--mode", choices=("single", "multi", "both"), default="both", help="default: both")
    fi.add_argument(
        "--per-problem",
        type=int,
        default=DEFAULT_PER_PROBLEM,
        help=f"tasks per problem and mode, at most (default {DEFAULT_PER_PROBLEM})",
    )
    fi.add_argument(
        "--task-seed", type=int, default=0, help="seeds the choice of lines to remove (default 0)"
    )
    fi.add_argument("--problems", help="the first N problems, or comma-separated ids (3,HumanEval/7)")
    fi.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens per middle, at most (default 128)"
    )
    fi.add_argument("--batch-size", type=int, default=16, help="sequences per generation forward pass")
    fi.add_argument("--workers", type=int, default=4, help="programs run in parallel")
    fi.add_argument("--timeout", type=float, default=3.0, help="seconds of wall clock per program")
    fi.add_argument("--device", default="cpu")
    fi.add_argument("--unsafe-no-isolation", action="store_true", help=UNSAFE_HELP)
    fi.set_defaults(func=infill_command)

    ppl = sub.add_parser(
        "perplexity",
        help="mean loss and perplexity on a preprocessed split",
        example="codeparrot-eval perplexity runs/demo/train --data runs/demo/data",
    )
    ppl.add_argument("model", help="checkpoint directory or exported model")
    ppl.add_argument("--tag", help="checkpoint tag (default: the latest)")
    ppl.add_argument("--data", required=True, help="preprocessed data directory (codeparrot-preprocess)")
    ppl.add_argument("--split", default="valid")
    ppl.add_argument("--seq-len", type=int, help="default: the model's context length")
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument(
        "--max-batches", type=int, help="stop after this many batches (default: the whole split)"
    )
    ppl.add_argument("--device", default="cpu")
    ppl.set_defaults(func=perplexity_command)
    return parser


def humaneval_command(args: argparse.Namespace) -> dict:
    from evaluation.humaneval import load_problems, run_humaneval, select_problems
    from evaluation.sandbox import Limits, Sandbox

    problems = [f"-n ({args.num_samples}) must be >= 1"] if args.num_samples < 1 else []
    problems += [f"--k ({k}) must be >= 1" for k in args.k if k < 1]
    problems += [f"--timeout ({args.timeout}) must be > 0"] if args.timeout <= 0 else []
    if not any(k <= args.num_samples for k in args.k):
        problems.append(f"no --k ({args.k}) is <= -n ({args.num_samples}): lower k or raise n")
    try:
        check_sampling(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    chosen = select_problems(load_problems(), args.problems)
    # Refuse before loading the model when the sandbox cannot isolate candidates.
    sandbox = Sandbox(Limits(timeout=args.timeout), allow_unisolated=args.unsafe_no_isolation)

    from evaluation.checkpoint import load_model, weights_sha256
    from evaluation.generate import complete as generate

    loaded = load_model(args.model, tag=args.tag, device=args.device)
    sampling = {key: getattr(args, key) for key in ("temperature", "top_p", "max_new_tokens", "seed")}
    identity = {"model": loaded.source, "weights_sha256": weights_sha256(loaded.model), "sampling": sampling}

    def complete(prompts: list[str], n: int) -> list[list[str]]:
        # A seed per (prompts, n): a resumed run asks again with the same arguments and gets the same samples.
        seed = args.seed + zlib.crc32("\0".join(prompts).encode()) + n
        return generate(
            loaded.model,
            loaded.tokenizer,
            prompts,
            n=n,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=seed,
            batch_size=args.batch_size,
            eod_id=loaded.eod_id,
            long_prompts="keep-end",  # a model with a short context is still scored, with a warning
        )

    results = run_humaneval(
        complete,
        args.out,
        sandbox=sandbox,
        n=args.num_samples,
        ks=args.k,
        problems=chosen,
        workers=args.workers,
        identity=identity,
    )
    summary = {key: value for key, value in results.items() if key not in ("per_task", "run")}
    print(json.dumps({"model": str(loaded.source), **summary}, indent=2))
    return results


def infill_command(args: argparse.Namespace) -> dict:
    """Greedy infilling of the holes of ``evaluation.infill.make_tasks``, judged in the sandbox."""
    from data_tools.fim import fim_ids
    from evaluation.humaneval import load_problems, select_problems
    from evaluation.infill import MAX_BLOCK_LINES, MODES, make_tasks, run_infill
    from evaluation.sandbox import Limits, Sandbox

    problems = [f"--timeout ({args.timeout}) must be > 0"] if args.timeout <= 0 else []
    problems += [f"--per-problem ({args.per_problem}) must be >= 1"] if args.per_problem < 1 else []
    problems += [f"--batch-size ({args.batch_size}) must be >= 1"] if args.batch_size < 1 else []
    try:
        check_sampling(temperature=0.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
    modes = MODES if args.mode == "both" else (args.mode,)
    chosen = select_problems(load_problems(), args.problems)
    tasks = make_tasks(chosen, modes, per_problem=args.per_problem, seed=args.task_seed)
    sandbox = Sandbox(Limits(timeout=args.timeout), allow_unisolated=args.unsafe_no_isolation)

    from evaluation.checkpoint import load_model, weights_sha256
    from evaluation.generate import infill

    loaded = load_model(args.model, tag=args.tag, device=args.device)
    fim_ids(loaded.tokenizer, str(args.model))  # refuse a model that cannot infill before writing anything
    identity = {
        "model": loaded.source,
        "weights_sha256": weights_sha256(loaded.model),
        "sampling": {"decoding": "greedy", "max_new_tokens": args.max_new_tokens},
        "tasks": {
            "seed": args.task_seed,
            "per_problem": args.per_problem,
            "max_block_lines": MAX_BLOCK_LINES,
        },
    }

    def fill(prefixes: list[str], suffixes: list[str]) -> list[str]:
        middles = infill(
            loaded.model,
            loaded.tokenizer,
            prefixes,
            suffixes,
            max_new_tokens=args.max_new_tokens,
            temperature=0.0,
            batch_size=args.batch_size,
            eod_id=loaded.eod_id,
            long_prompts="keep-end",  # a model with a short context is still scored, with a warning
            where=str(args.model),
        )
        return [m for [m] in middles]

    results = run_infill(
        fill, args.out, sandbox=sandbox, tasks=tasks, workers=args.workers, identity=identity
    )
    summary = {key: value for key, value in results.items() if key not in ("per_task", "run")}
    print(json.dumps({"model": str(loaded.source), **summary}, indent=2))
    return results


def perplexity_command(args: argparse.Namespace) -> dict:
    from evaluation.checkpoint import load_model
    from evaluation.perplexity import check_tokenizer, evaluate

    loaded = load_model(args.model, tag=args.tag, device=args.device)
    check_tokenizer(loaded.tokenizer, args.data)
    result = evaluate(
        loaded.model,
        args.data,
        split=args.split,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        device=args.device,
    )
    print(
        f"{args.split}: loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
        f"({result['tokens']} tokens, {result['sequences']} sequences)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.func(args)
    except (SandboxUnavailable, ValueError, DataError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"codeparrot-eval {args.command}: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
