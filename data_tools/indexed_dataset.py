"""The memory-mapped indexed dataset (`MMIDIDX`) of Megatron-LM, Megatron-DeepSpeed and GPT-NeoX.

A dataset is a path prefix P: `P.bin` holds the token ids of all sequences back to back; `P.idx` holds a
header and the per-sequence sizes and byte offsets (layout below, all little-endian). Shards written here
load in those tools, and theirs load here.

    offset      size  content
    0           9     magic b"MMIDIDX\\x00\\x00"
    9           8     version, uint64 = 1
    17          1     dtype code, uint8 (see DTYPE_CODES)
    18          8     N sequences, uint64
    26          8     D = len(doc_idx), uint64
    34          4N    sizes, int32
    34+4N       8N    pointers (byte offsets into P.bin), int64
    34+12N      8D    doc_idx, int64: 0, then one past the last sequence of each document

Writes are atomic: both files are written under temporary names, flushed, then renamed, .bin first, so a
killed job leaves either a complete pair or none (a stray `.idx` never points at a missing `.bin`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_tools.atomic import replace_atomic
from data_tools.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34
# Megatron-LM's codes. (GPT-NeoX swaps 6 and 7; no token ids use either.)
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
REGENERATE_HINT = (
    "HINT: regenerate the shards with `codeparrot-preprocess` (python -m data_tools.preprocess)."
)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 below 65,500 ids (as Megatron's writers choose), else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


class IndexedDatasetWriter:
    """Streams sequences into `prefix.bin`, then writes `prefix.idx` on `finalize()`.

    One sequence per document in GPT "document" mode (the default of `add_document`). The sha256 of the
    `.bin` is computed while writing."""

    def __init__(self, prefix: str | Path, dtype: np.dtype | type) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(
                f"dtype {self.dtype} has no MMIDIDX code; use one of {sorted(map(str, CODE_OF_DTYPE))}"
            )
        self._tmp_bin = self.prefix.with_name(self.prefix.name + ".bin.tmp")
        self._bin = open(self._tmp_bin, "wb")  # noqa: SIM115 - closed in finalize/abort
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]
        self._sha = hashlib.sha256()
        self.tokens = 0
        self.max_token: int | None = None  # the largest id written, for the manifest's vocabulary check

    def _see(self, data: np.ndarray) -> None:
        if data.size:
            top = int(data.max())
            self.max_token = top if self.max_token is None else max(self.max_token, top)

    def add_sequence(self, tokens: np.ndarray) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._see(data)
        buf = data.tobytes()
        self._bin.write(buf)
        self._sha.update(buf)
        self._sizes.append(len(data))
        self.tokens += len(data)

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens: np.ndarray) -> None:
        self.add_sequence(tokens)
        self.end_document()

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Many documents at once: `flat` holds them back to back, `lengths[i]` tokens each."""
        data = np.ascontiguousarray(flat, dtype=self.dtype)
        self._see(data)
        buf = data.tobytes()
        self._bin.write(buf)
        self._sha.update(buf)
        first = len(self._sizes)
        self._sizes.extend(int(n) for n in lengths)
        self._doc_idx.extend(range(first + 1, len(self._sizes) + 1))
        self.tokens += len(data)

    @property
    def num_documents(self) -> int:
        return len(self._doc_idx) - 1

    def finalize(self) -> dict[str, object]:
        """Write the index and move both files into place. Returns tokens, documents, sequences, the
        sha256 and size in bytes of each file (sha256/bin_bytes, idx_sha256/idx_bytes) and the largest
        token id (max_token, None when empty)."""
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.asarray(self._doc_idx, dtype=np.int64)
        header = MAGIC + struct.pack("<QBQQ", VERSION, CODE_OF_DTYPE[self.dtype], len(sizes), len(doc_idx))
        parts = [header, sizes.tobytes(order="C"), pointers.tobytes(order="C"), doc_idx.tobytes(order="C")]
        idx_sha = hashlib.sha256()
        tmp_idx = self.prefix.with_name(self.prefix.name + ".idx.tmp")
        with open(tmp_idx, "wb") as f:
            for part in parts:
                f.write(part)
                idx_sha.update(part)
        replace_atomic(self._tmp_bin, self.prefix.with_name(self.prefix.name + ".bin"), fsync=True)
        replace_atomic(tmp_idx, self.prefix.with_name(self.prefix.name + ".idx"), fsync=True)
        return {
            "tokens": int(self.tokens),
            "documents": self.num_documents,
            "sequences": len(sizes),
            "sha256": self._sha.hexdigest(),
            "bin_bytes": int(self.tokens) * self.dtype.itemsize,
            "idx_sha256": idx_sha.hexdigest(),
            "idx_bytes": sum(map(len, parts)),
            "max_token": self.max_token,
        }

    def abort(self) -> None:
        self._bin.close()
        self._tmp_bin.unlink(missing_ok=True)


class IndexedDataset:
    """Memory-mapped reader of a `prefix.bin`/`prefix.idx` pair, ours or Megatron's/GPT-NeoX's.

    The index is validated against the layout and against the length of the `.bin`; any mismatch raises
    DataError naming the file, what is wrong, and how to regenerate it. `ds[i]` is sequence i as a
    read-only numpy view (no copy)."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(str(prefix).removesuffix(".bin").removesuffix(".idx"))
        idx_path, bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for p in (idx_path, bin_path):
            if not p.exists():
                raise DataError(
                    f"{p}: file not found (an indexed dataset needs both .idx and .bin). {REGENERATE_HINT}"
                )
        self.idx_path, self.bin_path = idx_path, bin_path
        self._read_index(idx_path)
        self._check_bin(bin_path)
        self._bin = (
            np.memmap(bin_path, dtype=self.dtype, mode="r")
            if bin_path.stat().st_size
            else np.empty(0, self.dtype)
        )

    def _fail(self, path: Path, what: str) -> DataError:
        return DataError(f"{path}: {what}. {REGENERATE_HINT}")

    def _read_index(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise self._fail(path, f"truncated index: {size} bytes, the header alone is {HEADER_SIZE}")
        if header[:9] != MAGIC:
            raise self._fail(path, f"bad magic {header[:9]!r}, expected {MAGIC!r}: not an MMIDIDX index")
        (version,) = struct.unpack("<Q", header[9:17])
        if version != VERSION:
            raise self._fail(path, f"unsupported index version {version}, expected {VERSION}")
        (code,) = struct.unpack("<B", header[17:18])
        if code not in DTYPE_CODES:
            raise self._fail(path, f"unknown dtype code {code}; known codes: {sorted(DTYPE_CODES)}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        n, d = struct.unpack("<QQ", header[18:34])
        expected = HEADER_SIZE + 12 * n + 8 * d
        # Newer Megatron-LM may append sequence_modes (int8[N]) for multimodal data.
        if size not in (expected, expected + n):
            raise self._fail(
                path,
                f"index size {size} bytes does not match its header ({n} sequences, {d} doc_idx entries: "
                f"{expected} bytes expected)",
            )
        mm = np.memmap(path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(mm, dtype=np.int32, count=n, offset=HEADER_SIZE)
        self.pointers = np.frombuffer(mm, dtype=np.int64, count=n, offset=HEADER_SIZE + 4 * n)
        self.doc_idx = np.frombuffer(mm, dtype=np.int64, count=d, offset=HEADER_SIZE + 12 * n)
        if n and (self.sizes.min() < 0):
            raise self._fail(path, "negative sequence size in the index")
        if d and (self.doc_idx[0] != 0 or self.doc_idx[-1] != n or np.any(np.diff(self.doc_idx) < 0)):
            raise self._fail(path, f"doc_idx must rise from 0 to the sequence count {n}")

    def _check_bin(self, path: Path) -> None:
        actual = path.stat().st_size
        expected = int(self.sizes.astype(np.int64).sum()) * self.dtype.itemsize
        if actual != expected:
            state = "truncated" if actual < expected else "longer than its index says"
            raise self._fail(
                path,
                f"{state}: {actual} bytes, but {self.idx_path.name} describes {expected} bytes "
                f"({len(self.sizes)} sequences of {self.dtype})",
            )
        if len(self.sizes) and self.pointers[0] != 0:
            raise self._fail(
                self.idx_path,
                f"the first sequence's pointer is {int(self.pointers[0])}, not 0: the index does not "
                f"describe {path.name} from its start (an index cut from a larger one, or damaged)",
            )
        if len(self.sizes) and not np.array_equal(
            self.pointers[1:], self.pointers[:-1] + self.sizes[:-1].astype(np.int64) * self.dtype.itemsize
        ):
            raise self._fail(
                self.idx_path, "pointers are not the running sum of sizes: .idx and .bin disagree"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start : start + int(self.sizes[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Part of sequence i: `length` tokens from `offset` (to the end when None)."""
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        end = start + (int(self.sizes[i]) - offset if length is None else length)
        return self._bin[start:end]

    @property
    def tokens(self) -> np.ndarray:
        """All tokens of the dataset as one flat read-only array."""
        return self._bin

    @property
    def num_documents(self) -> int:
        return max(len(self.doc_idx) - 1, 0)


def write_dataset(
    prefix: str | Path, sequences: Sequence[np.ndarray], dtype: np.dtype | type
) -> dict[str, object]:
    """Write `sequences` (one document each) as a dataset; for tests and small jobs."""
    writer = IndexedDatasetWriter(prefix, dtype)
    for seq in sequences:
        writer.add_document(seq)
    return writer.finalize()
