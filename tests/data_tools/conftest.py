"""Small real corpora and a small tokenizer, shared by the data-tools tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.sources import Problems, SourceConfig, iter_documents
from data_tools.train_tokenizer import train


def code_doc(i: int) -> str:
    """A distinct, realistic Python document that passes every default filter."""
    return (
        f'"""Module number {i}."""\n\n'
        f"import os\n\n\n"
        f"def function_{i}(value, scale={i % 7 + 1}):\n"
        f"    total = 0\n"
        f"    for item in range(value):\n"
        f"        total += item * scale + {i}\n"
        f"    return total\n\n\n"
        f"class Holder{i}:\n"
        f"    def __init__(self, name):\n"
        f"        self.name = name + '_{i}'\n"
        f"        self.count = {i * 3}\n"
    )


@pytest.fixture(scope="session")
def stdlib_sample() -> list[str]:
    """About 60 real standard-library files (sorted, deterministic)."""
    docs = list(iter_documents(SourceConfig(), Problems()))
    return [d.text for d in docs[::30]][:60]


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, stdlib_sample) -> Path:
    """A 600-id byte-level BPE tokenizer trained on the sample (a second or two)."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train(stdlib_sample + [code_doc(i) for i in range(50)], out, vocab_size=600, show_progress=False)
    return out


def write_jsonl(path: Path, records: list[object]) -> Path:
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
