"""Checkpoints of ZeRO-2, ZeRO-3 and pipeline + ZeRO-1 (2 CPU ranks, real launcher) consolidate, export to a
transformers GPT-2 directory that loads offline with the same logits, and train.init_from starts a run at
the exported weights. Errors name the directory, what is missing and the fix."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may reach the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from evaluation.checkpoint import CheckpointError, consolidate, load_model
from evaluation.export import export
from evaluation.export import main as export_main
from model.gpt2 import GPT
from tests.training.conftest import ROOT, check, deepspeed_cmd, run, run_config, tiny_data  # noqa: F401

BIN = Path(sys.executable).parent  # the console scripts of the venv running the tests

pytestmark = pytest.mark.slow

# ZeRO-2/3 with 2 data-parallel ranks, and 2 pipeline stages accumulating 2 micro-batches: the same global
# batch of 4 sequences, so the three runs train the same weights up to fp32 rounding.
MODES = {
    "zero2": ("zero2_cpu.json", {}),
    "zero3": ("zero3_cpu.json", {}),
    "pipeline_zero1": ("pipeline_zero1_cpu.json", {"pipeline_stages": 2, "grad_accum": 2}),
}
STEPS = 4
RUN = dict(max_steps=STEPS, save_interval=2, eval_interval=0, keep_last=0)


def _train(tmp: Path, data: Path, ds_config: str, **train) -> Path:
    config = run_config(tmp, data, **train)
    check(run(deepspeed_cmd(config, ds_config), tmp))
    return tmp / "ckpt"


@pytest.fixture(scope="module")
def zero2_run(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    return _train(tmp_path_factory.mktemp("zero2"), tiny_data, MODES["zero2"][0], **RUN)


@pytest.fixture(scope="module", params=list(MODES))
def trained(request, tiny_data, tmp_path_factory) -> tuple[str, Path]:  # noqa: F811
    """(mode, train.save_dir) after STEPS steps, with checkpoints at steps 2 and 4."""
    if request.param == "zero2":
        return "zero2", request.getfixturevalue("zero2_run")
    ds_config, train = MODES[request.param]
    return request.param, _train(tmp_path_factory.mktemp(request.param), tiny_data, ds_config, **RUN, **train)


@pytest.fixture(scope="module")
def zero2_export(zero2_run, tmp_path_factory) -> Path:
    """The ZeRO-2 run exported through the console script."""
    tmp = tmp_path_factory.mktemp("zero2_export")
    check(run([str(BIN / "codeparrot-export"), str(zero2_run), str(tmp / "hf")], tmp))
    return tmp / "hf"


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


def test_consolidated_weights_agree_across_modes(trained, zero2_run):
    mode, save_dir = trained
    reference_state, _, _ = consolidate(zero2_run)
    state, config, info = consolidate(save_dir)
    assert (info["tag"], info["step"], info["pipeline_stages"]) == (
        f"global_step{STEPS}",
        STEPS,
        2 if "pipe" in mode else 1,
    )
    assert all(v.dtype == torch.float32 for v in state.values())
    assert state.keys() == reference_state.keys() == GPT(config).state_dict().keys()
    # fp32, 4 Adam steps: only the order of the gradient reductions differs between the modes.
    for name, value in state.items():
        torch.testing.assert_close(value, reference_state[name], rtol=1e-4, atol=2e-5, msg=name)
    earlier, _, info2 = consolidate(save_dir, tag="global_step2")
    assert info2["step"] == 2
    assert not torch.equal(earlier["embed.wte.weight"], state["embed.wte.weight"])


def test_export_loads_offline_with_the_same_logits(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    mode, save_dir = trained
    out = export(save_dir, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    ours = load_model(save_dir)
    assert not ours.model.training and ours.eod_id == ours.tokenizer.token_to_id("<|endoftext|>")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.config.eos_token_id == ours.eod_id == hf.generation_config.pad_token_id
    gen = hf.generation_config
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.max_new_tokens) == (True, 0.2, 0.95, 256)
    ids = _ids(ours.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours.model(ids)[0], rtol=0, atol=1e-5)
        # And back: the export loads through load_model with the same logits.
        back = load_model(out)
        torch.testing.assert_close(back.model(ids)[0], ours.model(ids)[0], rtol=0, atol=1e-5)
    assert back.eod_id == ours.eod_id and back.config.n_layer == ours.config.n_layer

    text = "def add(a, b):\n    return"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == ours.eod_id
    assert tokenizer(text).input_ids == ours.tokenizer.encode(text).ids
    generate = pipeline("text-generation", model=str(out), device="cpu")
    result = generate(text, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert result.startswith(text) and len(result) > len(text)


# Without ZeRO (stage 0) on one rank the plain model takes the weights, and the checkpoint holds the module.
ZERO0 = {"zero_optimization": {"stage": 0}, "steps_per_print": 1000000}


@pytest.mark.parametrize("mode", ["zero0", "zero3", "pipeline_zero1"])
def test_init_from_starts_at_the_exported_weights(zero2_export, tiny_data, tmp_path, mode):  # noqa: F811
    # A learning rate of 1e-30 leaves the weights unchanged in fp32 through the one step before the save.
    ds_config, train = MODES.get(mode, (None, {}))
    extra = dict(max_steps=1, save_interval=1, eval_interval=0, init_from=str(zero2_export), seed=7)
    config = run_config(tmp_path, tiny_data, **extra, **train)
    settings = json.loads(config.read_text())
    settings["optim"].update(lr=1e-30, min_lr=0.0, warmup_steps=0)
    config.write_text(json.dumps(settings))
    if ds_config is None:
        (tmp_path / "zero0.json").write_text(json.dumps(ZERO0))
        cmd = [sys.executable, str(ROOT / "pretrain_gpt.py"), "--config", str(config)]
        result = check(run([*cmd, "--ds_config", str(tmp_path / "zero0.json")], tmp_path))
    else:
        result = check(run(deepspeed_cmd(config, ds_config), tmp_path))
    assert "train.init_from: weights of" in result.stdout + result.stderr
    started, _, info = consolidate(tmp_path / "ckpt")
    assert info["step"] == 1
    exported = load_model(zero2_export).model.state_dict()
    for name, value in started.items():
        torch.testing.assert_close(value, exported[name], rtol=0, atol=1e-6, msg=name)


def test_init_from_must_match_the_model(zero2_export, tiny_data, tmp_path, capsys):  # noqa: F811
    import pretrain_gpt

    config = run_config(tmp_path, tiny_data)
    ds_config = str(ROOT / "ds_configs" / "zero2_cpu.json")
    base = ["--dry-run", "--world", "2", "--config", str(config), "--ds_config", ds_config]
    assert pretrain_gpt.main([*base, "--set", "model.n_layer=3", f"train.init_from={zero2_export}"]) == 2
    err = capsys.readouterr().err
    assert f"train.init_from '{zero2_export}' holds another model shape: n_layer 2 (run: 3)" in err
    missing = tmp_path / "nowhere"
    assert pretrain_gpt.main([*base, "--set", f"train.init_from={missing}"]) == 2
    assert f"train.init_from '{missing}' does not exist" in capsys.readouterr().err
    assert pretrain_gpt.main([*base, "--set", f"train.init_from={zero2_export}"]) == 0


def test_errors_name_the_directory_and_the_fix(zero2_run, zero2_export, tmp_path, capsys):
    broken = tmp_path / "ckpt"
    shutil.copytree(zero2_run, broken)
    (broken / "global_step4" / "COMPLETE").unlink()
    incomplete = f"{broken / 'global_step4'} is incomplete (no COMPLETE marker"
    with pytest.raises(CheckpointError, match=re.escape(incomplete)) as e:
        consolidate(broken)
    assert f"complete checkpoints in {broken}: global_step2; pass one with --tag" in str(e.value)
    with pytest.raises(
        CheckpointError, match=re.escape(f"tag global_step9 {zero2_run / 'global_step9'} does not")
    ):
        consolidate(zero2_run, tag="global_step9")
    nowhere = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=re.escape(f"{nowhere} does not exist: pass a training")):
        load_model(nowhere)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path} has no run_config.json")):
        load_model(tmp_path)

    out = tmp_path / "out"
    shutil.copytree(zero2_export, out)
    assert export_main([str(zero2_run), str(out)]) == 2
    assert (
        f"{out} exists and is not empty: choose a new directory, or pass --overwrite"
        in capsys.readouterr().err
    )
    assert export_main([str(zero2_run), str(out), "--tag", "global_step2", "--overwrite"]) == 0
    step2, _, _ = consolidate(zero2_run, tag="global_step2")
    torch.testing.assert_close(
        load_model(out).model.state_dict()["embed.wte.weight"], step2["embed.wte.weight"]
    )


# ---- the console scripts on a checkpoint of pretrain_gpt.py and on its export ------------------------


def test_generate_from_the_checkpoint_and_the_export_alike(zero2_run, zero2_export, tmp_path):
    """codeparrot-generate: the prompt from an argument, a file or stdin; greedy completions of the
    checkpoint and of its export are the same text."""
    args = ["--max-new-tokens", "12", "--temperature", "0", "--no-stop"]
    outs = [
        check(run([str(BIN / "codeparrot-generate"), str(model), "def add(a, b):", *args], tmp_path)).stdout
        for model in (zero2_run, zero2_export)
    ]
    assert (
        outs[0] == outs[1] and outs[0].startswith("def add(a, b):") and len(outs[0]) > len("def add(a, b):\n")
    )
    (tmp_path / "prompt.py").write_text("def add(a, b):")
    from_file = run(
        [str(BIN / "codeparrot-generate"), str(zero2_export), "--file", str(tmp_path / "prompt.py"), *args],
        tmp_path,
    )
    assert check(from_file).stdout == outs[0]
    import subprocess

    from_stdin = subprocess.run(
        [
            str(BIN / "codeparrot-generate"),
            str(zero2_export),
            "-n",
            "2",
            "--temperature",
            "0.8",
            "--max-new-tokens",
            "8",
        ],
        input="import os\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout.count("# ---- completion") == 2


def test_infill_from_the_checkpoint_the_export_and_transformers_alike(zero2_run, zero2_export, tmp_path):
    """codeparrot-generate --suffix writes the same middle from the checkpoint and from its export; the
    export's tokenizer keeps the fill-in-the-middle sentinels as special tokens, and transformers, given the
    PSM prompt, greedily writes that middle too."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from data_tools.fim import FIM_TOKENS, infill_prompt

    prefix, suffix = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"
    args = [prefix, "--suffix", suffix, "--max-new-tokens", "12", "--temperature", "0"]
    outs = [
        check(run([str(BIN / "codeparrot-generate"), str(model), *args], tmp_path)).stdout
        for model in (zero2_run, zero2_export)
    ]
    assert outs[0] == outs[1]

    tokenizer = AutoTokenizer.from_pretrained(zero2_export)
    assert set(FIM_TOKENS) <= set(tokenizer.all_special_tokens)
    model = GPT2LMHeadModel.from_pretrained(zero2_export).eval()
    inputs = tokenizer(infill_prompt(prefix, suffix), return_tensors="pt")
    ends = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(FIM_TOKENS))]
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=ends)
    middle = ids[0, inputs.input_ids.shape[1] :].tolist()
    middle = middle[: next((i for i, t in enumerate(middle) if t in ends), len(middle))]
    assert middle, "the model ended the middle at once: nothing compared"
    assert outs[0] == tokenizer.decode(middle) + "\n"


def test_perplexity_of_the_checkpoint_and_the_export_agree(zero2_run, zero2_export, tiny_data, tmp_path):  # noqa: F811
    lines = []
    for model in (zero2_run, zero2_export):
        out = check(
            run([str(BIN / "codeparrot-eval"), "perplexity", str(model), "--data", str(tiny_data)], tmp_path)
        ).stdout
        loss = float(re.search(r"loss ([0-9.]+)", out)[1])
        ppl = float(re.search(r"perplexity ([0-9.]+)", out)[1])
        assert abs(ppl - torch.tensor(loss).exp().item()) <= 1e-3 * ppl, out
        lines.append((loss, ppl))
    assert lines[0] == pytest.approx(lines[1], rel=1e-5)
    assert 1 < lines[0][1] < 600  # better than uniform over the 600-id vocabulary after a few steps


def test_humaneval_on_a_subset_with_the_export(zero2_export, tmp_path):
    out_dir = tmp_path / "he"
    cmd = [str(BIN / "codeparrot-eval"), "humaneval", str(zero2_export), "--out", str(out_dir)]
    cmd += ["--problems", "3", "-n", "2", "--k", "1", "--max-new-tokens", "16", "--workers", "2"]
    result = check(run(cmd, tmp_path))
    samples = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(s["verdict"] for s in samples)
    results = json.loads((out_dir / "results.json").read_text())
    assert 0.0 <= results["pass@1"] <= 1.0 and "pass@10" not in results, results
    assert "pass@1" in result.stdout
    again = check(run(cmd, tmp_path))  # everything is there already: nothing generated or judged again
    assert [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()] == samples
    assert "pass@1" in again.stdout
