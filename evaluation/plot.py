"""codeparrot-plot: one PNG of one or more training runs, read from their metrics.jsonl.

    codeparrot-plot runs/demo/train                      -> runs/demo/train/metrics.png
    codeparrot-plot runs/a/train runs/b/train --out ab.png

Panels, against the tokens seen (consumed samples x data.seq_len from the run's run_config.json): training
loss, validation loss, learning rate, gradient norm, tokens/s and MFU (recorded only where the device's peak
FLOP/s is known: a GPU of training/gpus.py or train.peak_tflops; a CPU run says so in the panel). One colour
per run, named by its directory (with as many parent directories as it takes to tell equal names apart).
A dotted vertical line in the run's colour marks each point where the run resumed from a checkpoint: the
"resume" event record the trainer writes (training/loop.py); in a file written before that record existed,
a step counter that goes back or repeats (metrics.jsonl is appended to, so a restart from an earlier
checkpoint logs its steps again; the mark then goes at the last step logged before the repeat, the latest
the checkpoint can be). Records of steps that a resume went back over are dropped: each line is the run's
history as its checkpoints continued it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmdline import EXIT_OK, EXIT_UNUSABLE
from cmdline.args import OneLineParser
from cmdline.logs import setup_logging
from training.run_files import METRICS, RUN_CONFIG

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

SIZE_PX = (1500, 900)  # width x height of the PNG
DPI = 100
# (panel title, record key, y scale: "log" where the values span over a decade); a record without the key
# (or with null) has no point in that panel
PANELS = (
    ("training loss", "loss", "linear"),
    ("validation loss", "valid_loss", "linear"),
    ("learning rate", "lr", "linear"),
    ("gradient norm", "grad_norm", "log"),
    ("tokens/s (all ranks)", "tokens_per_s", "linear"),
    ("MFU", "mfu", "linear"),
)
ABSENT = {
    "valid_loss": "no validation records: train.eval_interval is 0, or the data has no valid split",
    "mfu": "MFU not recorded: the device's peak FLOP/s is unknown\n(a CPU run, or a GPU not in "
    "training/gpus.py);\nset train.peak_tflops to record it",
}


class RunError(ValueError):
    """A directory that cannot be plotted; the message names the path and what to pass instead."""


@dataclass
class Run:
    """One run's history: `steps` (step records in step order, each with "tokens" added), `resumes`
    (the tokens seen at each resume) and the name its lines carry in the legend."""

    path: Path
    name: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[float] = field(default_factory=list)


def _not_a_run(path: Path, what: str) -> RunError:
    hint = ""
    if path.is_dir():
        inside = sorted(p.parent for p in path.glob(f"*/{METRICS}"))
        if inside:
            hint = f" ({', '.join(str(p) for p in inside[:3])} has one: pass that)"
    return RunError(
        f"{path} {what}: not a training run's train.save_dir{hint}. Pass the directory pretrain_gpt.py "
        f"trained into (train.save_dir, where it writes {METRICS} from its first logged step)"
    )


def _seq_len(path: Path) -> int:
    config = path / RUN_CONFIG
    if not config.is_file():
        raise _not_a_run(path, f"has no {RUN_CONFIG}")
    try:
        return int(json.loads(config.read_text())["data"]["seq_len"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(
            f"{config} has no readable data.seq_len ({e!r}): resume the run once to rewrite the file"
        ) from None


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of path/metrics.jsonl; a torn last line (a process killed mid-write) is left out."""
    metrics = path / METRICS
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise RunError(f"{path} {what}: pass a training run's train.save_dir (where {METRICS} is)")
    if not metrics.is_file():
        raise _not_a_run(path, f"has no {METRICS}")
    lines = metrics.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines):
                raise RunError(
                    f"{metrics} line {i} is not JSON ({e.msg}): the file is damaged; remove that line"
                ) from None
            logger.warning("%s: the last line is incomplete (a process stopped mid-write): left out", metrics)
    if not any("event" not in r for r in out):
        raise RunError(
            f"{metrics} holds no step record: the run has not logged a step yet (every train.log_interval "
            "steps); plot it after its first logged step"
        )
    return out


def read_run(path: Path | str, name: str | None = None) -> Run:
    """The run in `path` (a train.save_dir); RunError naming the path when it is not one."""
    path = Path(path)
    records = _records(path)
    seq_len = _seq_len(path)
    run = Run(path, name or path.name)
    for r in records:
        step = r.get("step")
        if r.get("event") == "resume":
            run.steps = [s for s in run.steps if s["step"] <= step]  # a resume from an earlier checkpoint
            run.resumes.append(float(r.get("tokens", r.get("consumed_samples", 0) * seq_len)))
        elif "event" not in r:
            r = {**r, "tokens": r.get("consumed_samples", 0) * seq_len}
            if run.steps and step <= run.steps[-1]["step"]:  # restarted without a mark: an older file
                run.steps = [s for s in run.steps if s["step"] < step]
                run.resumes.append(run.steps[-1]["tokens"] if run.steps else 0.0)  # at the latest here
            run.steps.append(r)
    return run


def run_names(paths: Sequence[Path]) -> list[str]:
    """Each path's directory name, with parent directories added where names are equal (a/train,
    b/train); the same path twice is numbered."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = [str(Path(*p[-d:])) for p, d in zip(parts, depth, strict=True)]
        clash = [
            i
            for i, n in enumerate(names)
            if depth[i] < len(parts[i])
            and any(m == n and q != parts[i] for m, q in zip(names, parts, strict=True))
        ]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n} ({seen[n]})")
    return out


def read_runs(paths: Sequence[Path | str]) -> list[Run]:
    paths = [Path(p) for p in paths]
    return [read_run(p, name) for p, name in zip(paths, run_names(paths), strict=True)]


def _panel(ax: Axes, runs: list[Run], colors: list[str], title: str, key: str, scale: str) -> None:
    from matplotlib.ticker import EngFormatter

    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.grid(True, alpha=0.3)
    values = []
    for run, color in zip(runs, colors, strict=True):
        points = [(s["tokens"], s[key]) for s in run.steps if s.get(key) is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        values += ys
        marker = "o" if key == "valid_loss" or len(points) == 1 else None
        (line,) = ax.plot(xs, ys, color=color, marker=marker, markersize=3, linewidth=1.2)
        line.set_label(run.name)
        line.set_gid(key)
        for tokens in run.resumes:
            ax.axvline(tokens, color=color, linestyle=":", linewidth=1.2).set_gid("resume")
    if not values:
        text = ABSENT.get(key, f"no run recorded {key}")
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
        ax.set_yticks([])
        return
    if scale == "log" and min(values) > 0 and max(values) > 10 * min(values):  # spikes over a decade
        ax.set_yscale("log")
    if key == "mfu":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def draw(runs: list[Run], size_px: tuple[int, int] = SIZE_PX) -> Figure:
    """The figure of the runs (matplotlib's Agg canvas: no display, no pyplot state). Each data line
    carries its record key as gid ("loss", "valid_loss", ...) and each resume line the gid "resume"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cycle = [f"C{i % 10}" for i in range(len(runs))]
    axes = fig.subplots(2, 3, sharex=True)
    for ax, (title, key, scale) in zip(axes.flat, PANELS, strict=True):
        _panel(ax, runs, cycle, title, key, scale)
    for ax in axes[-1]:
        ax.set_xlabel("tokens seen")
    handles = [Line2D([], [], color=c, label=r.name) for r, c in zip(runs, cycle, strict=True)]
    if any(r.resumes for r in runs):
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="resumed from a checkpoint"))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4), frameon=False)
    return fig


def plot(paths: Sequence[Path | str], out: Path | str | None = None) -> Path:
    """Read the runs and write the PNG: `out`, else RUN_DIR/metrics.png for one run, else ./runs.png."""
    runs = read_runs(paths)
    if out is None:
        out = runs[0].path / "metrics.png" if len(runs) == 1 else Path("runs.png")
    out = Path(out)
    fig = draw(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(
        prog="codeparrot-plot",
        description=__doc__,
        example="codeparrot-plot runs/demo/train",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a training run's train.save_dir")
    p.add_argument(
        "--out", metavar="PNG", help="the PNG to write (default RUN_DIR/metrics.png; ./runs.png for several)"
    )
    args = p.parse_args(argv)
    setup_logging()
    try:
        out = plot(args.run_dirs, args.out)
    except RunError as e:
        print(f"codeparrot-plot: error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
