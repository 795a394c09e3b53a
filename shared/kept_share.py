"""A dataset (or one task's part of it) that kept too few of the samples it read: one line saying so,
the skip reasons and the fix, for Stage 1's exit status and inspect's headline alike.

A usual skip rate passes: CC12M loses about one sample in eight to the 256 px size filter. A task that
keeps under ``MIN_KEPT_SHARE`` of what it read (none at all, typically: images too small for a 512 px
encode) has gone wrong, and an exit status of 0 would hide it until Stage 2 finds the dataset empty.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.contract import TRUNCATED_TAR_SKIP

MIN_KEPT_SHARE = 0.5
"""Below this share of the samples read kept, the encode is reported as gone wrong."""
TOO_SMALL = "too_small"


def few_kept(kept: int, skipped: Mapping[str, int], image_size: int) -> str | None:
    """``'kept 0 of 35 samples read (0 %; too_small: 35): images smaller than 512 px: …'``, or ``None``
    when nothing was read or at least ``MIN_KEPT_SHARE`` was kept. A damaged tar's own count (it broke
    off) is not a sample and not counted."""
    reasons = {reason: n for reason, n in skipped.items() if reason != TRUNCATED_TAR_SKIP and n}
    read = kept + sum(reasons.values())
    if not read or kept >= MIN_KEPT_SHARE * read:
        return None
    listed = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(reasons.items(), key=lambda item: -item[1]))
    return f"kept {kept:,} of {read:,} samples read ({kept / read:.0%}; {listed}): {_fix(reasons, image_size)}"


def _fix(reasons: Mapping[str, int], image_size: int) -> str:
    if max(reasons, key=lambda reason: reasons[reason]) == TOO_SMALL:
        return (
            f"most images are smaller than {image_size} px: encode at a smaller --image.size (e.g. a 256 px "
            f"dataset) or give larger images"
        )
    return "python -m shared.inspect_shards DATASET counts each skip reason per store"
