"""Numbers with units for people: sizes, counts, rates and durations, as every report of the project
prints them (``inspect_shards``, preflight, the downloaders), so one figure reads the same everywhere."""

from __future__ import annotations


def count(n: float) -> str:
    """10,400,000 -> '10.4 M'; small counts stay exact."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:,.0f}"


def size(n: float) -> str:
    """Bytes with binary units: 1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1000 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{_digits3(n)} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def rate(per_second: float) -> str:
    return _digits3(per_second) if per_second < 1000 else f"{per_second:,.0f}"


def _digits3(x: float) -> str:
    """Three significant digits without switching to exponent notation (999.0, 12.3, 1.23, 0.012)."""
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"
    return f"{seconds // 86400:.0f} d {seconds % 86400 / 3600:.0f} h"
