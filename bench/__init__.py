"""The benchmarks, each run from the repository root as ``python -m bench.<name>`` (bench/ is not installed).

A benchmark module measures one thing and prints its ratio last; what they share lives in modules that are
not benchmarks: common.py (the machine, the results JSON, the benchmarks' model and shards), launcher.py
(the `deepspeed` launch), matmul.py (the dense-matmul timer and peaks) and targets.py (the project's
targets, which suite.py judges and report.py renders).
"""
