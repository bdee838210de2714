"""Errors shared across the data tools, the shard format and training's data loading.

Kept apart from the readers that raise them, so that a module which only needs to raise or catch
`DataError` (the shard reader, the manifest, training) does not import the corpus readers.
"""

from __future__ import annotations


class DataError(Exception):
    """An input or output problem the user must fix; the message names the file, the value and the fix."""
