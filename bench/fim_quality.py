"""Does fill-in-the-middle cost left-to-right quality? The demo's model trained with data.fim_rate 0 and 0.5.

    python -m bench.fim_quality                         # the demo's data, model and steps; rates 0 and 0.5
    python -m bench.fim_quality --seeds 1234,7 --data runs/demo/data      # two seeds, existing shards
    python -m bench.fim_quality --max-steps 1500       # the demo's model on 6x its tokens

Bavarian et al. 2022 report that FIM at rate 0.5 leaves left-to-right loss unchanged at scale ("FIM for
free"); this measures it at the size the demo trains in minutes. For each --seeds x --rates, in one run on
the same shards (the standard library with an 8,192-id tokenizer, as `make demo` builds them; or --data):

  train     pretrain_gpt.py under the real `deepspeed` launcher (bench.launcher), --ranks CPU ranks,
            configs/demo.json (its model, steps and batch: the same tokens for every rate),
            ds_configs/zero2_cpu.json, with data.fim_rate and train.seed set;
  L2R       left-to-right validation loss: `codeparrot-eval perplexity` on the whole valid split (documents
            as they are, no FIM);
  infill    `codeparrot-eval infill`: single- and multi-line holes of HumanEval's canonical solutions,
            filled greedily and judged in the sandbox; exact match and pass rate.

The last line is the left-to-right validation loss at FIM 0.5 over that at FIM 0 (mean over seeds): 1.00
is "FIM for free". The figures go to bench/results/fim_quality_<date>_<cpu>.json (bench/common.py). This
is a measurement, not a timed test: about 4 minutes per training on 2 cores, plus a minute of infilling.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    ROOT,
    Run,
    run_command,
)
from bench.launcher import BIN, deepspeed_env, pretrain_command
from training.run_files import METRICS

TIMEOUT_S = 3600


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    return run_command(cmd, env, TIMEOUT_S)


def build_data(tmp: Path) -> Path:
    """`make demo`'s shards: the standard library, cleaned, with an 8,192-id tokenizer trained on it."""
    from data_tools.preprocess import PreprocessConfig, preprocess

    preprocess(PreprocessConfig(output=tmp / "data", vocab_size=8192, show_progress=False, workers=2))
    return tmp / "data"


def train(args: argparse.Namespace, data: Path, save_dir: Path, rate: float, seed: int) -> dict[str, Any]:
    sets = [
        f'data.paths=["{data}"]',
        f"train.save_dir={save_dir}",
        f"data.fim_rate={rate}",
        f"train.seed={seed}",
    ]
    sets += [f"train.max_steps={args.max_steps}"] if args.max_steps else []
    cmd = pretrain_command(args.config, "ds_configs/zero2_cpu.json", "--set", *sets, ranks=args.ranks)
    output = run(cmd, deepspeed_env(save_dir.parent / "cache"))
    if rate > 0 and "fill-in-the-middle: " not in output:
        raise RuntimeError(
            f"data.fim_rate {rate} but the run did not log fill-in-the-middle:\n{output[-2000:]}"
        )
    lines = [json.loads(x) for x in (save_dir / METRICS).read_text().splitlines()]
    last = lines[-1]
    return {
        "steps": last["step"],
        "consumed_samples": last["consumed_samples"],  # the same for every rate: the same tokens
        "final_train_loss": last.get("loss"),
        "valid_losses": {x["step"]: x["valid_loss"] for x in lines if "valid_loss" in x},
    }


def l2r_loss(save_dir: Path, data: Path) -> dict[str, float]:
    out = run([str(BIN / "codeparrot-eval"), "perplexity", str(save_dir), "--data", str(data)])
    m = re.search(r"valid: loss ([0-9.]+)\s+perplexity ([0-9.]+)\s+\((\d+) tokens", out)
    if m is None:
        raise RuntimeError(f"codeparrot-eval perplexity printed no loss:\n{out[-2000:]}")
    return {"loss": float(m[1]), "perplexity": float(m[2]), "tokens": int(m[3])}


def infill_scores(args: argparse.Namespace, save_dir: Path, out_dir: Path) -> dict[str, Any]:
    cmd = [str(BIN / "codeparrot-eval"), "infill", str(save_dir), "--out", str(out_dir)]
    cmd += ["--per-problem", str(args.per_problem), "--max-new-tokens", str(args.max_new_tokens)]
    if args.problems:
        cmd += ["--problems", args.problems]
    run(cmd)
    return json.loads((out_dir / "results.json").read_text())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0,0.5", help="data.fim_rate values, comma-separated (first: baseline)")
    p.add_argument("--seeds", default="1234", help="train.seed values, comma-separated")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.json", help="the run config")
    p.add_argument("--ranks", type=int, default=2, help="CPU ranks of each training")
    p.add_argument("--max-steps", type=int, help="train.max_steps (default: the config's)")
    p.add_argument("--per-problem", type=int, default=3, help="infill holes per problem and mode")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per middle, at most")
    p.add_argument("--problems", help="HumanEval problems to infill (default: all 164)")
    p.add_argument("--data", type=Path, help="a preprocess output directory (default: build the demo's)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the measurement; returns the results JSON's path."""
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    harness = Run("bench.fim_quality", argv)
    out = harness.out
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        if args.data is None:
            out("building shards (standard library, 8,192-id tokenizer, as make demo) ...")
        data = (args.data or build_data(tmp)).resolve()
        for seed in seeds:
            for rate in rates:
                save_dir = tmp / f"train_{seed}_{rate}"
                trained = train(args, data, save_dir, rate, seed)
                l2r = l2r_loss(save_dir, data)
                infill = infill_scores(args, save_dir, tmp / f"infill_{seed}_{rate}")
                r = {"fim_rate": rate, "seed": seed, "train": trained, "l2r": l2r, "infill": infill}
                runs.append(r)
                out(
                    f"fim_rate {rate} seed {seed}: {trained['steps']} steps, left-to-right valid loss "
                    f"{l2r['loss']:.4f} (ppl {l2r['perplexity']:.2f}) | infill {scores_text(scores(infill))}"
                )
    by_rate = {}
    for rate in rates:
        mine = [r for r in runs if r["fim_rate"] == rate]
        by_rate[str(rate)] = {
            "l2r_loss": statistics.mean(r["l2r"]["loss"] for r in mine),
            "l2r_loss_per_seed": [r["l2r"]["loss"] for r in mine],
            "infill": {k: statistics.mean(scores(r["infill"])[k] for r in mine) for k in SCORES},
        }
    base = by_rate[str(rates[0])]
    config = json.loads(Path(args.config).read_text())
    m = config["model"]["overrides"]
    setting = (
        f"configs/demo.json: {m['n_layer']} layers x {m['n_embd']}, seq {config['data']['seq_len']}, "
        f"{args.max_steps or config['train']['max_steps']} steps x {args.ranks} ranks x micro-batch "
        f"{config['train']['micro_batch']}; seeds {args.seeds}"
    )
    table = [
        {
            "benchmark": "bench/fim_quality.py",
            "setting": f"{setting}; data.fim_rate {rate}",
            "precision": "auto",
            "native": "native",
            "baseline": f"fim_rate {rates[0]}: L2R valid loss {base['l2r_loss']:.4f}",
            "ours": f"L2R valid loss {v['l2r_loss']:.4f}; infill {scores_text(v['infill'])}",
            "ratio": round(v["l2r_loss"] / base["l2r_loss"], 4),
            "how": "left-to-right validation loss / that at the first rate, mean over seeds",
        }
        for rate, v in by_rate.items()
    ]
    last = by_rate[str(rates[-1])]
    final = (
        f"left-to-right valid loss, fim_rate {rates[-1]} / fim_rate {rates[0]}: "
        f"{last['l2r_loss'] / base['l2r_loss']:.4f}x"
    )
    figures = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "by_rate": by_rate}
    return harness.finish(
        precision=None,
        figures=figures,
        table=table,
        final_line=final,
        results_dir=args.results_dir,
    )


SCORES = ("exact_match", "single_exact_match", "multi_exact_match", "pass_rate")


def scores(results: dict[str, Any]) -> dict[str, float]:
    """SCORES from codeparrot-eval infill's results.json: overall, and per mode (single_, multi_)."""
    out = {"exact_match": results["exact_match"], "pass_rate": results["pass_rate"]}
    for mode in ("single", "multi"):
        out[f"{mode}_exact_match"] = results["per_mode"][mode]["exact_match"]
    return out


def scores_text(s: dict[str, float]) -> str:
    return (
        f"exact match {100 * s['exact_match']:.1f}% (single {100 * s['single_exact_match']:.1f}%, multi "
        f"{100 * s['multi_exact_match']:.1f}%), pass {100 * s['pass_rate']:.1f}%"
    )


if __name__ == "__main__":
    main()
    sys.exit(0)
