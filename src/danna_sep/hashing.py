"""The sha256 of a file, read in blocks: one home for the hash that bundles, manifests and
downloads record and check."""

from __future__ import annotations

import hashlib
import os
from typing import Union

_BLOCK = 1 << 20


def file_sha256(path: Union[str, "os.PathLike[str]"]) -> str:
    """The sha256 of a file's bytes, as hex (read 1 MiB at a time, so any size fits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
