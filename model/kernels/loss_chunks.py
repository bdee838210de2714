"""Chunk and group sizes of the chunked loss (model/kernels/cross_entropy.py), torch-free so that the
planner (plan/memory.py) sizes the loss's buffers without importing torch."""

from __future__ import annotations


def default_chunk_rows(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows per chunk: about 8 MiB of fp32 logits on CPU, 256 MiB on CUDA.

    CPU: every chunk-sized buffer stays below glibc's 32 MiB mmap threshold; larger buffers are mmap'ed
    afresh at each allocation and page-faulted in, which made 32 MiB chunks 10x slower per element here.
    CUDA (caching allocator): larger chunks keep the head matmuls large.
    """
    chunk_bytes = 256 * 2**20 if device_type == "cuda" else 8 * 2**20
    return max(16, chunk_bytes // (4 * vocab_size))


def default_group_rows(vocab_size: int, chunk_rows: int, itemsize: int, device_type: str = "cpu") -> int:
    """Rows of low-precision softmax gradient gathered per weight-gradient matmul (a multiple of
    ``chunk_rows``): at most 30 MiB of them on CPU; one chunk in fp32, where the matmul accumulates into
    the fp32 gradient itself (``addmm_``), and on CUDA, where a chunk already has thousands of rows and the
    add is a small part of its time.

    CPU: below glibc's 32 MiB ceiling for its dynamic mmap threshold, so the buffer is recycled from the
    heap at every step instead of mmap'ed and page-faulted in afresh (a 64 MiB group was slower than none
    in a VM, where page faults are dear)."""
    if itemsize >= 4 or device_type == "cuda":
        return chunk_rows
    return max(1, 30 * 2**20 // (itemsize * vocab_size * chunk_rows)) * chunk_rows
