"""The per-array checksums a store records at commit and every reader re-derives: SHA-256 over an
array's values fed block by block in sample order, so a writer can hash while it writes."""

from __future__ import annotations

import hashlib

import numpy as np


def checksum_update(hasher: "hashlib._Hash", values: np.ndarray) -> None:
    """Feed one block of an array (in sample order) into its running checksum.

    Numeric arrays hash their C-order bytes; string arrays hash each UTF-8 string with its length,
    so the checksum of an array equals that of its blocks fed in order.
    """
    if values.dtype.kind in "OUT":
        for s in values.reshape(-1).tolist():
            b = str(s).encode("utf-8")
            hasher.update(len(b).to_bytes(8, "little"))
            hasher.update(b)
    else:
        hasher.update(np.ascontiguousarray(values).data)  # the array's own bytes, not a copy


def checksum(values: np.ndarray) -> str:
    h = hashlib.sha256()
    checksum_update(h, values)
    return "sha256:" + h.hexdigest()
