"""A person's window into a dataset: what is there, is it whole, what does it look like.

    python -m shared.inspect_shards DATASET [--verify] [--tokens [N]] [--show N | --key K] [--grid OUT.png] [--json]

The summary reads only per-store attributes and Stage 1's heartbeats (seconds for thousands of
stores) and never vouches for the bytes: ``--verify`` re-reads every array. Exit status: 0 fine,
1 ``--verify`` found problems or a ``--key`` matched nothing, 2 not a readable dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import contract, heartbeat
from shared.contract import ContractError, Identity
from shared.inspection import report
from shared.progress import STALE_AFTER_S, Summary, summarise

if TYPE_CHECKING:  # imported lazily below: they load torch and zarr, which the summary never needs
    from shared.inspection.grid import GridResult
    from shared.inspection.samples import Sample
    from shared.inspection.text_half import TextHalf
    from shared.inspection.token_lengths import TokenLengths
    from shared.inspection.verify import VerifyResult

DEFAULT_TOKEN_SAMPLES = 5000
"""``--tokens`` without N: captions counted (seconds to tokenize; percentiles within a token or two)."""
GRID_SAMPLES = 8
"""Samples in a ``--grid`` when neither ``--show`` nor ``--key`` chooses them."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shared.inspect_shards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="dataset directory (holds dataset.json)")
    parser.add_argument("--verify", action="store_true", help="re-read every store: checksums, schema, NaN/Inf, statistics")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes for --verify (default: all cores)")
    parser.add_argument("--tokens", type=int, nargs="?", const=DEFAULT_TOKEN_SAMPLES, metavar="N",
                        help="T5 tokens per caption (mean, p50, p99, max, truncated) over up to N samples spread over "
                             f"the dataset (default {DEFAULT_TOKEN_SAMPLES}): the share of T5 rows compact text keeps")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--show", type=int, metavar="N", help="describe N samples spread evenly over the dataset")
    pick.add_argument("--key", action="append", metavar="K", help="describe the sample(s) with key K (repeatable)")
    parser.add_argument("--grid", metavar="OUT.png", help=f"decode the shown samples (default {GRID_SAMPLES}) into a PNG")
    parser.add_argument("--ae", metavar="PATH", help="assets dir (or its ae.safetensors) for --grid; default: the dataset's")
    parser.add_argument("--device", help="device for --grid (default: cuda when present, else cpu)")
    parser.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="S",
                        help=f"a running task silent this many seconds is stale (default {STALE_AFTER_S:.0f})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    starting = starting_line(Path(args.dataset))
    if starting:
        print(starting)
        return 0
    try:
        summary = summarise(args.dataset, stale_after_s=args.stale_after)
        text = _text_half(args.dataset, summary)
        verification = _verify(args, summary) if args.verify else None
        lengths = _token_lengths(args.dataset, summary, args.tokens) if args.tokens else None
        samples = _samples(args)
        grid = _grid(args, samples) if args.grid else None
    except ContractError as exc:
        just_submitted = "" if (Path(args.dataset) / contract.DATASET_FILE).exists() else (
            " (if Stage 1 was submitted moments ago: its tasks have not started yet; squeue shows them)"
        )
        print(f"error: {exc}{just_submitted}", file=sys.stderr)
        return 2
    if args.json:
        out = _as_json(summary, verification, samples, grid)
        out |= {"text": dataclasses.asdict(text)} if text else {}
        out |= {"tokens": lengths if isinstance(lengths, str) else dataclasses.asdict(lengths)} if lengths else {}
        print(json.dumps(out, indent=2, default=str))
    else:
        print(_as_text(summary, verification, samples, grid, text, lengths))
    failed = (verification is not None and not verification.ok) or (args.key is not None and not samples)
    return 1 if failed else 0


def starting_line(dataset: Path) -> str | None:
    """Before a dataset has its identity (``dataset.json``, written once the encoders have loaded),
    what its Stage 1 tasks' first heartbeats say; ``None`` once it has one, or when no task reported."""
    if (dataset / contract.DATASET_FILE).exists():
        return None
    tasks = heartbeat.read_heartbeats(dataset)
    if not tasks:
        return None
    return (
        f"STARTING: Stage 1 is starting: {len(tasks):,} of {tasks[0].num_tasks:,} task(s) reported, loading "
        f"their encoders; no store yet (dataset.json is written once the encoders have loaded)"
    )


def _text_half(dataset: str, summary: Summary) -> TextHalf | None:
    """The text dataset of an image dataset (``--text-from``); ``None`` for one that stores its text."""
    if "text_dataset" not in summary.identity:
        return None
    from shared.inspection.text_half import text_half

    return text_half(dataset, Identity.from_dict(summary.identity))


def _token_lengths(dataset: str, summary: Summary, cap: int) -> TokenLengths | str:
    from shared.inspection.token_lengths import token_lengths

    return token_lengths(dataset, Identity.from_dict(summary.identity), cap)


def _verify(args: argparse.Namespace, summary: Summary) -> VerifyResult:
    from shared.inspection.verify import verify

    show_progress = sys.stderr.isatty() and not args.json
    return verify(args.dataset, args.workers, summary, _print_progress if show_progress else None)


def _samples(args: argparse.Namespace) -> list[Sample]:
    if not (args.show or args.key or args.grid):
        return []
    from shared.inspection import samples

    if args.key:
        locations = [hit for key in args.key for hit in samples.find_key(args.dataset, key)]
    else:
        locations = samples.spread(args.dataset, args.show or GRID_SAMPLES)
    return samples.read_samples(args.dataset, locations)


def _grid(args: argparse.Namespace, samples: list[Sample]) -> GridResult:
    from shared.inspection.grid import write_grid

    if not samples:
        raise ContractError("no samples to decode for --grid")
    return write_grid(args.dataset, samples, args.grid, args.ae, args.device)


def _as_text(
    summary: Summary, verification: VerifyResult | None, samples: list[Sample], grid: GridResult | None,
    text: TextHalf | None, lengths: TokenLengths | str | None,
) -> str:
    top = [report.headline(summary)]
    if summary.damaged:
        top.append(report.damaged_remedy(summary))
    if verification is not None:
        top.append(report.verify_headline(verification))
        if not verification.ok:
            top.append(report.verify_remedy(verification, summary.dataset))
    parts = ["\n".join(top), report.render_summary(summary)]
    if text is not None:
        parts.append(report.render_text_half(text))
    if lengths is not None:
        parts.append(report.render_token_lengths(lengths))
    if samples:
        parts.append(report.render_samples(samples))
    if grid is not None:
        parts.append(report.render_grid(grid, len(samples)))
    if verification is None:
        parts.append("(store contents were not re-read: --verify recomputes every checksum)")
    elif not verification.ok:
        parts.append(report.render_findings(verification.findings))
    return "\n\n".join(parts)


def _as_json(
    summary: Summary, verification: VerifyResult | None, samples: list[Sample], grid: GridResult | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"headline": report.headline(summary), "summary": summary.to_dict()}
    if verification is not None:
        out["verify"] = {
            "headline": report.verify_headline(verification),
            "ok": verification.ok,
            **dataclasses.asdict(verification),
        }
    if samples:
        out["samples"] = [s.to_dict() for s in samples]
    if grid is not None:
        out["grid"] = dataclasses.asdict(grid)
    return out


def _print_progress(done: int, total: int) -> None:
    print(f"\rverifying: {done}/{total} stores", end="\n" if done == total else "", file=sys.stderr, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly, as git's does
    sys.exit(main())
