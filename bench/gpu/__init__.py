"""The GPU benchmark: ``bash bench/gpu/run.sh`` runs ``python -m bench.gpu.gpu_bench`` (see its docstring)."""
