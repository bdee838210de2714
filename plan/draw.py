"""codeparrot-plan --plot PNG: the planned rank's GPU memory as stacked bars, one per phase.

Each bar stacks the terms that live across steps (``state``) and then the phase's own terms, so the taller
of the forward/backward and optimizer-step bars is the plan's peak (plan.memory.Plan.peak_bytes). A
horizontal line marks the usable memory (the GPU's less SAFETY_FRACTION), a dashed one the whole GPU.
Terms kept in host memory (offload) are not drawn: the title gives their total. matplotlib is imported
here only, when a plot is asked for, so codeparrot-plan stays free of it (and of torch) otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from plan.memory import GIB, PHASE_TITLES, SAFETY_FRACTION, Plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIZE_PX = (1100, 700)  # width x height of the PNG
DPI = 100
# The bars, left to right: (title, the phases stacked in it)
BARS = (
    (PHASE_TITLES["state"], ("state",)),
    (PHASE_TITLES["backward"], ("state", "backward")),
    (PHASE_TITLES["step"], ("state", "step")),
)


def memory_figure(p: Plan, size_px: tuple[int, int] = SIZE_PX) -> Figure:
    """The figure (matplotlib's Agg canvas, no pyplot state). Each bar segment carries its term's name as
    gid; the bars stand at x = 0, 1, ... under their titles (the x tick labels); the usable-memory line has
    gid "usable", the GPU's "gpu"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    terms = [t for t in p.terms if t.device == "gpu" and t.bytes > 0]
    names = list(dict.fromkeys(t.name for t in terms))
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    hatches = {n: "//" * (i // 10) for i, n in enumerate(names)}  # more terms than the 10 colours
    bars = [(title, phases) for title, phases in BARS if any(t.phase == phases[-1] for t in terms)]
    for x, (_, phases) in enumerate(bars):
        bottom = 0.0
        for t in (t for phase in phases for t in terms if t.phase == phase):
            height = t.bytes / GIB
            (patch,) = ax.bar(
                x,
                height,
                bottom=bottom,
                width=0.6,
                color=colors[t.name],
                hatch=hatches[t.name],
                edgecolor="white",
                linewidth=0.5,
            )
            patch.set_gid(t.name)
            bottom += height
        ax.annotate(
            f"{bottom:.2f} GiB",
            (x, bottom),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 3),
            textcoords="offset points",
        )
    usable, whole = p.usable_bytes / GIB, p.gpu.memory_gib
    ax.axhline(usable, color="crimson", linewidth=1.5).set_gid("usable")
    ax.axhline(whole, color="0.4", linewidth=1, linestyle="--").set_gid("gpu")
    ax.set_xticks(range(len(bars)), [title for title, _ in bars])
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_ylim(0, max(whole, p.peak_bytes / GIB) * 1.08)
    ax.set_ylabel("GiB per GPU")
    ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=colors[n], hatch=hatches[n], label=_term_label(p, n)) for n in reversed(names)]
    usable_label = f"usable {usable:.1f} GiB ({1 - SAFETY_FRACTION:.0%} of the GPU)"
    handles += [
        Line2D([], [], color="crimson", linewidth=1.5, label=usable_label),
        Line2D([], [], color="0.4", linestyle="--", label=f"{p.gpu.name}: {whole:.1f} GiB"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(_title(p), fontsize=10)
    return fig


def _term_label(p: Plan, name: str) -> str:
    phases = {"state": "kept", "backward": "fwd/bwd", "step": "step"}
    found = [t for t in p.terms if t.name == name and t.device == "gpu"]
    return f"{name} ({phases[found[0].phase]}, {sum(t.bytes for t in found) / GIB:.2f} GiB)"


def _title(p: Plan) -> str:
    lay = p.layout
    stage = f", pipeline stage {p.stage} (the largest)" if lay.pipeline_stages > 1 else ""
    host = p.total(device="cpu")
    offload = f"; {host / GIB:.2f} GiB per rank in host memory (offload), not drawn" if host else ""
    fit = "fits" if p.fits else "DOES NOT FIT"
    return (
        f"{p.preset} on {lay.gpus} x {p.gpu.name}: ZeRO {lay.zero_stage}, {lay.pipeline_stages} stage(s) x "
        f"{lay.dp} dp, micro-batch {lay.micro_batch} x {lay.seq_len} tokens, {lay.precision}{stage}\n"
        f"peak {p.peak_bytes / GIB:.2f} of {p.usable_bytes / GIB:.2f} GiB usable: {fit}{offload}"
    )


def write_memory_plot(p: Plan, out: Path | str) -> Path:
    """Draw the plan's memory into the PNG `out` (its directory made if missing); the path written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    memory_figure(p).savefig(out, dpi=DPI)
    return out
