"""One row per check, the aligned table they print as, and the command line of a stage's preflight."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    """``OK``, ``WARN`` (works, but likely not as meant) or ``FAIL`` (the job would fail or be wrong)."""
    detail: str


def render(rows: list[Row]) -> str:
    header = Row("check", "status", "detail")
    width = max(len(r.check) for r in [header, *rows])
    lines = [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in [header, *rows]]
    lines.insert(1, f"{'-' * width}  {'-' * 6}  {'-' * 6}")
    counts = {s: sum(r.status == s for r in rows) for s in (OK, WARN, FAIL)}
    verdict = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([*lines, f"preflight: {verdict}"])


def failed(rows: list[Row]) -> bool:
    return any(r.status == FAIL for r in rows)


def print_table(rows: list[Row]) -> int:
    """Print the table; the exit status of a preflight command: 1 on any FAIL, else 0."""
    print(render(rows))
    return 1 if failed(rows) else 0


def command_line(prog: str, doc: str | None, epilog: str) -> argparse.ArgumentParser:
    """A stage preflight's parser: its docstring as help; unknown arguments are left for the stage's
    config overrides (``parse_known_args``)."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
