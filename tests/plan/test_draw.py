"""codeparrot-plan --plot: the stacked memory bars add up to the plan's own figures, the image has its size
and content, and neither torch nor (without --plot) matplotlib is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.presets import get_preset
from plan.cli import main
from plan.draw import SIZE_PX, memory_figure
from plan.memory import GIB, Gpu, Layout, plan
from tests.training.test_planner import WITHOUT_TORCH

ROOT = Path(__file__).resolve().parents[2]


def bar_tops(fig) -> dict[str, float]:
    """Bar title (its x tick label) -> the top of its stack (GiB), from the drawn rectangles."""
    ax = fig.axes[0]
    titles = {
        round(x): label.get_text() for x, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
    }
    tops: dict[str, float] = defaultdict(float)
    for patch in ax.patches:
        title = titles[round(patch.get_x() + patch.get_width() / 2)]
        tops[title] = max(tops[title], patch.get_y() + patch.get_height())
    return dict(tops)


@pytest.mark.parametrize("offload", ["none", "optimizer"])
def test_the_bars_stack_the_plans_terms_up_to_its_peak(offload):
    """codeparrot, ZeRO-2 on 32 GPUs: every GPU term is one segment; the bars reach the kept bytes, kept +
    forward/backward and kept + step (none with the optimizer offloaded: its step runs on the host, whose
    bytes the title gives); the usable line is the plan's."""
    lay = Layout(seq_len=1024, micro_batch=8, grad_accum=2, dp=32, zero_stage=2, offload=offload)
    p = plan(get_preset("codeparrot"), lay, Gpu("h100-sxm", 81559 / 1024, 989))
    fig = memory_figure(p)
    tops = bar_tops(fig)
    expected = {
        "kept across steps": p.resident_bytes / GIB,
        "forward/backward": (p.resident_bytes + p.total("backward")) / GIB,
        "optimizer step": (p.resident_bytes + p.total("step")) / GIB,
    }
    if offload == "optimizer":
        assert p.total("step") == 0 and p.total(device="cpu") > 0
        assert "host memory (offload), not drawn" in fig.axes[0].get_title()
        del expected["optimizer step"]
    assert tops == pytest.approx(expected)
    assert max(tops.values()) == pytest.approx(p.peak_bytes / GIB)
    segments = {patch.get_gid() for patch in fig.axes[0].patches}
    assert segments == {t.name for t in p.terms if t.device == "gpu" and t.bytes > 0}
    (usable,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == "usable"]
    assert usable.get_ydata()[0] == pytest.approx(p.usable_bytes / GIB)


def test_plot_option_writes_the_png_and_keeps_json_on_stdout(tmp_path, capsys):
    out = tmp_path / "plots" / "plan.png"
    code = main(["--preset", "codeparrot-small", "--gpu", "h200", "--json", "--plot", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["memory"]["fits"]
    assert captured.err.strip().endswith(f"memory plot: {out}")
    image = Image.open(out)
    assert image.format == "PNG" and image.size == SIZE_PX
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # not a blank canvas: bars, lines, text


NO_TORCH = WITHOUT_TORCH + """
assert main(["--preset", "codeparrot-small", "--gpu", "h200"]) == 0
assert "matplotlib" not in sys.modules, "matplotlib imported without --plot"
assert main(["--preset", "codeparrot-small", "--gpu", "h200", "--plot", sys.argv[1]]) == 0
print("no torch")
"""


def test_plot_imports_no_torch_and_matplotlib_only_when_asked(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path / "p.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("no torch"), out.stderr[-3000:]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_plot_with_suggest_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--preset", "tiny", "--suggest", "--plot", str(tmp_path / "p.png")])
    assert refused.value.code == 2
    assert "--plot draws one layout's memory" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
