"""GPT-2 model, kernels, pipeline cut and transformers mapping.

Submodules are imported explicitly (``from model.gpt2 import GPT``) so that ``model.config`` stays usable
without importing torch.
"""
