"""Fused ops, one file per op, each beside its plain torch reference and an availability check.

Choices ("auto", a named kernel or "torch") are resolved per call from the tensors' device; the resolution is
cached and logged once per (op, request, device) through ``logging.getLogger(__name__)`` of each op's file.
"""
