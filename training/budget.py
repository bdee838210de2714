"""How many steps of a run fit in a given time on this machine: how `make demo` sizes its training.

    python -m training.budget --config configs/demo.json --ds_config ds_configs/zero2_cpu.json --seconds 180

prints `train.max_steps=N` for `pretrain_gpt.py --set`. It builds the run's model (on its data's vocabulary,
as validate() resolves it) in the precision the run would choose here, times a few training steps of one
micro-batch on this process's threads (the demo runs one thread per CPU rank, every rank on its own
core), and divides the time by the step time, times STEP_OVERHEAD for what the DeepSpeed engine adds
(the gradient all-reduce, the optimizer's fp32 master copy, evaluation and checkpoints every few hundred
steps). So a demo trains for about the same time on an AMX Xeon, a Zen 4 and an AVX2-only CPU, each in
its own precision, instead of a fixed number of steps that is noise on one and slow on another. The
choice is logged with the measured step time; the result is clamped to [MIN_STEPS, MAX_STEPS].
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from cmdline import EXIT_OK, EXIT_UNUSABLE
from cmdline.args import OneLineParser, positive_float, positive_int
from cmdline.logs import setup_logging

logger = logging.getLogger(__name__)

# The demo's whole training step on 2 CPU ranks (DeepSpeed ZeRO-2, gloo) over a bare forward, backward and
# AdamW step of one micro-batch on one thread, with evaluation and checkpoints spread over the steps.
# Measured with configs/demo.json on a 2-core AMD EPYC (avx512_bf16, bf16): bare step 0.195 s, 685 steps
# trained in 159 s from the engine's start to the last save (1.19x); see the README's demo section.
STEP_OVERHEAD = 1.2
MIN_STEPS, MAX_STEPS = 50, 20_000
TIMED_STEPS = 5


def step_seconds(model_config, micro_batch: int, seq_len: int, precision: str) -> float:
    """Median seconds of one forward, backward and AdamW step of `micro_batch` x `seq_len` random tokens."""
    import torch

    from model.gpt2 import GPT

    torch.manual_seed(0)
    model = GPT(model_config)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, model_config.vocab_size, (micro_batch, seq_len + 1))
    times = []
    for i in range(TIMED_STEPS + 2):  # two warm-up steps
        start = time.perf_counter()
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def steps_in(seconds: float, step_s: float) -> int:
    return max(MIN_STEPS, min(MAX_STEPS, int(seconds / (step_s * STEP_OVERHEAD))))


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m training.budget",
        description=__doc__.split("\n\n")[0],
        example="python -m training.budget --config configs/demo.json --ds_config ds_configs/zero2_cpu.json "
        "--seconds 180",
    )
    p.add_argument("--config", help="run config JSON")
    p.add_argument("--ds_config", default="ds_configs/zero2_cpu.json", help="DeepSpeed JSON")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run config overrides")
    p.add_argument("--world", type=positive_int, default=2, help="ranks the run will have (default 2)")
    p.add_argument("--seconds", type=positive_float, default=180.0, help="training time (default 180)")
    args = p.parse_args(argv)
    setup_logging()
    from training.config import ConfigError, load_run_config
    from training.validate import load_ds_config, validate

    try:
        run = load_run_config(args.config, args.set)
        setup = validate(run, load_ds_config(args.ds_config), args.ds_config, args.world, "cpu")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    precision = setup.precision.precision
    step_s = step_seconds(setup.model, run.train.micro_batch, run.data.seq_len, precision)
    steps = steps_in(args.seconds, step_s)
    tokens = steps * setup.global_batch * run.data.seq_len
    logger.info(
        "%s: a %s step of %d x %d tokens takes %.0f ms here (x%.2f for the engine): %d steps, %s tokens in "
        "about %.0f s",
        args.config or "the default run",
        precision,
        run.train.micro_batch,
        run.data.seq_len,
        step_s * 1e3,
        STEP_OVERHEAD,
        steps,
        f"{tokens:,}",
        args.seconds,
    )
    print(f"train.max_steps={steps}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
