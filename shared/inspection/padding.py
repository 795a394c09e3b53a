"""``--verify`` of compact text: every ``t5_length`` in [1, t5_max_length] and every ``t5`` row from it on zero.

Checksums prove a store holds what its writer wrote, not that the writer kept compact text's promise;
Stage 2 trusts ``t5_length`` to mask the padding, so a store whose lengths lie is named here.
"""

from __future__ import annotations

import numpy as np

from shared import contract
from shared.contract import Identity


def used_rows(t5: np.ndarray) -> np.ndarray:
    """Stored ``t5`` [n, L, D] -> per sample, one past its last row holding a nonzero bit (0: all zero)."""
    nonzero = t5.reshape(*t5.shape[:2], -1).any(axis=2)
    last = nonzero.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0)


class PaddingCheck:
    """Fed every block ``verify_store`` reads (``add``); ``problems`` compares rows used with lengths.
    An exact identity's blocks are not looked at (its padding rows are real T5 outputs)."""

    def __init__(self, identity: Identity) -> None:
        self._compact = identity.compact_text
        self._max_length = identity.t5_max_length
        self._used: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []

    def add(self, name: str, block: np.ndarray) -> None:
        if not self._compact:
            return
        if name == contract.T5:
            self._used.append(used_rows(block))
        elif name == contract.T5_LENGTH:
            self._lengths.append(np.asarray(block))

    def problems(self) -> list[str]:
        if not self._lengths:
            return []
        used, lengths = np.concatenate(self._used or [np.zeros(0, int)]), np.concatenate(self._lengths)
        out = []
        bad = np.flatnonzero((lengths < 1) | (lengths > self._max_length))
        if len(bad):
            out.append(
                f"{contract.T5_LENGTH}: {len(bad)} sample(s) outside [1, {self._max_length}] "
                f"(first: sample {bad[0]}, length {lengths[bad[0]]})"
            )
        if len(used) == len(lengths):  # else an unreadable t5 block, reported by itself
            over = np.flatnonzero(used > lengths)
            if len(over):
                i = over[0]
                out.append(
                    f"{contract.T5}: {len(over)} sample(s) hold nonzero rows at or after their {contract.T5_LENGTH} "
                    f"(first: sample {i}, length {lengths[i]}, last nonzero row {used[i] - 1})"
                )
        return out
