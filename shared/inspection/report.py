"""Human-readable text for a summary, a verification, samples and a grid: verdict first, then aligned
sections, numbers with units. Pure functions of the results; the JSON output needs none of this."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterable

from shared.contract import Identity
from shared.kept_share import few_kept
from shared.progress import Finding, Summary, TaskStatus
from shared.units import count, duration, rate, size

if TYPE_CHECKING:  # importing these would load torch and zarr, which a summary never needs
    from shared.inspection.grid import GridResult
    from shared.inspection.samples import Sample
    from shared.inspection.text_half import TextHalf
    from shared.inspection.token_lengths import TokenLengths
    from shared.inspection.verify import VerifyResult

LABEL = 16
"""Width of the section labels on the left."""
MAX_LISTED = 12
"""Rows listed per section (tasks, temporaries, names) before '… N more'."""
MAX_MESSAGE = 200
"""Characters of one finding's text (a codec's exception can quote whole byte strings)."""
TASK_ORDER = {"failed": 0, "stale": 1, "running": 2, "done": 3}
"""Most urgent first in the task table."""


CROP_NOTE = (
    "(the crop is fixed per sample at encode time: every epoch trains the same crop of an image, "
    "where TorchTitan's online Flux trainer draws a new random one)"
)

# --------------------------------------------------------------------------- summary


def headline(s: Summary) -> str:
    """The one-line verdict, e.g. 'COMPLETE: 2,176/2,176 stores, 10.4 M samples'."""
    stores = f"{s.stores_committed:,}/{s.stores_expected:,}" if s.stores_expected is not None else f"{s.stores_committed:,}"
    verdict = f"{s.verdict}{_damaged_headline(s)} ·" if s.damaged else f"{s.verdict}:"
    parts = [f"{verdict} {stores} stores, {count(s.samples)} samples"]
    few = few_kept(s.samples, s.skipped, s.identity.get("image_size", 0))
    if few:
        parts.append(few)
    if s.problems:
        parts.append(f"{_plural(len({f.where for f in s.problems}), 'store')} must not be used")
    if s.live_tasks:
        parts.append(f"{_plural(len(s.live_tasks), 'task')} running, ETA {duration(s.eta_s)}")
    if s.missing and not s.live_tasks:
        parts.append(f"{len(s.missing):,} missing")
    states = Counter(t.state for t in s.tasks)
    parts += [f"{_plural(states[state], 'task')} {state}" for state in ("stale", "failed") if states[state]]
    if s.tasks_unreported:
        parts.append(f"{_plural(s.tasks_unreported, 'task')} not started")
    if s.stores_expected is None:
        parts.append("expected stores unknown (no Stage 1 heartbeats)")
    return ", ".join(parts)


MAX_DAMAGED_IN_HEADLINE = 3


def _damaged_headline(s: Summary) -> str:
    """' with 1 damaged source: a.tar cut at byte N, ~9 samples unread' (empty when none)."""
    if not s.damaged:
        return ""
    named = [
        f"{d.tar_name} cut at byte {d.cut_at_byte:,}"
        + (f", ~{d.samples_unread:,} samples unread" if d.samples_unread is not None else "")
        for d in s.damaged[:MAX_DAMAGED_IN_HEADLINE]
    ]
    more = f" (+{len(s.damaged) - MAX_DAMAGED_IN_HEADLINE} more)" if len(s.damaged) > MAX_DAMAGED_IN_HEADLINE else ""
    return f" with {_plural(len(s.damaged), 'damaged source')}: {'; '.join(named)}{more}"


def damaged_remedy(s: Summary) -> str:
    """What to do about damaged sources, for the line under the headline (empty when none)."""
    if not s.damaged:
        return ""
    return (
        "  → each damaged store holds the whole samples before its tar's cut. Replace the tar(s) with whole "
        "copies and rerun the same Stage 1 command: stores whose source changed are encoded again."
    )


def render_summary(s: Summary) -> str:
    sections = [
        _overview(s),
        _tasks(s),
        _temporaries(s),
        _problems(s.problems),
        _identity(s),
        _arrays(s),
    ]
    return "\n\n".join(x for x in sections if x)


def _overview(s: Summary) -> str:
    lines = [_row("Dataset", s.dataset), _row("Stores", _stores_line(s))]
    lines += [_row("", line) for line in _store_lists(s)]
    per_store = ""
    if s.samples_per_store:  # None when no store is usable
        low, median, high = s.samples_per_store
        per_store = f" (per store min {low:,} · median {median:,} · max {high:,})"
    lines.append(_row("Samples", f"{s.samples:,}{per_store}"))
    skipped = sum(s.skipped.values())
    reasons = " · ".join(f"{reason} {n:,}" for reason, n in s.skipped.items())
    share = f" ({100 * skipped / (skipped + s.samples):.1f} % of inputs)" if skipped else ""
    lines.append(_row("Skipped", f"{skipped:,}{share}" + (f": {reasons}" if reasons else "")))
    lines.append(_row("Storage", _storage_line(s)))
    return "\n".join(lines)


def _stores_line(s: Summary) -> str:
    if s.stores_expected is None:
        return f"{s.stores_committed:,} committed · expected unknown: no Stage 1 heartbeats in progress/"
    reported = f"{len(s.tasks)}/{s.tasks_expected}"
    return f"{s.stores_committed:,} committed / {s.stores_expected:,} expected (sources of {reported} task heartbeats)"


def _store_lists(s: Summary) -> list[str]:
    lines = []
    if s.missing:
        lines.append(f"{len(s.missing):,} missing: {_names(s.missing)}")
    if s.unexpected:
        lines.append(f"{len(s.unexpected):,} not named by any heartbeat: {_names(s.unexpected)}")
    return lines


def _storage_line(s: Summary) -> str:
    if not s.samples or not s.stored_bytes:
        return size(s.stored_bytes)
    return (
        f"{size(s.stored_bytes)} · {size(s.stored_bytes / s.samples)}/sample · "
        f"compression {s.raw_bytes / s.stored_bytes:.2f}× (tensors raw {size(s.raw_bytes)})"
    )


def _tasks(s: Summary) -> str:
    if not s.tasks:
        return ""
    states = Counter(t.state for t in s.tasks)
    counts = " · ".join(f"{state} {states[state]}" for state in reversed(TASK_ORDER) if states[state])
    header = f"{len(s.tasks)}/{s.tasks_expected} reported: {counts}"
    if s.live_tasks:
        header += f" · {rate(s.rate_samples_per_s)} samples/s · ETA {duration(s.eta_s)}"
    shown = sorted((t for t in s.tasks if t.state != "done"), key=lambda t: (TASK_ORDER[t.state], t.index))
    rows = [_row("Stage 1 tasks", header)]
    if shown:
        rows.append(_row("", f"{'task':>5}  {'state':<8}{'heartbeat':>10}{'left':>7}{'samples/s':>11}{'ETA':>12}  where"))
        rows += [_row("", _task_row(t)) for t in shown[:MAX_LISTED]]
        rows += _more(len(shown))
    return "\n".join(rows)


def _task_row(t: TaskStatus) -> str:
    where = " ".join(x for x in (t.host, t.slurm_job, f"at {t.current_source}" if t.current_source else "") if x)
    message = f" — {t.message}" if t.message else ""
    left = f"{t.remaining}/{t.sources}"
    return (
        f"{t.index:>5}  {t.state:<8}{duration(t.heartbeat_age_s) + ' ago':>10}{left:>7}"
        f"{rate(t.samples_per_second):>11}{duration(t.eta_s) if t.state == 'running' else '-':>12}  {where}{message}"
    )


def _temporaries(s: Summary) -> str:
    if not s.temporaries:
        return ""
    width = max(len(t.name) for t in s.temporaries[:MAX_LISTED])
    rows = [_row("Temporaries", f"{len(s.temporaries)} (stores not committed: never read by Stage 2)")]
    rows += [_row("", f"{t.name:<{width}}  {duration(t.age_s)} old  {t.status}") for t in s.temporaries[:MAX_LISTED]]
    return "\n".join(rows + _more(len(s.temporaries)))


def render_text_half(t: TextHalf) -> str:
    """An image dataset's other half: the text dataset it pairs with, and whether it still does."""
    if t.path is None:
        return _row("Text", f"MISSING: {t.problem}")
    rows = [_row("Text", f"from {t.path} · identity {t.identity_digest} · {_plural(t.stores, 'store')} · "
                         f"{count(t.samples)} samples · {size(t.stored_bytes)}")]
    rows.append(_row("  pairing", f"PROBLEM: {t.problem}" if t.problem else "every store pairs (text key checksums as recorded)"))
    return "\n".join(rows)


def render_token_lengths(t: TokenLengths | str) -> str:
    """T5 tokens per caption, and the share of the stored T5 rows they are (what compact text keeps)."""
    if isinstance(t, str):
        return t
    counted = f"all {count(t.samples)} samples" if t.samples == t.of_samples else (
        f"{count(t.samples)} of {count(t.of_samples)} samples, spread evenly")
    return "\n".join([
        _row("T5 tokens", f"per caption ({t.source}, {counted}): mean {t.mean:.1f} · p50 {t.p50:g} · p99 {t.p99:g} · "
                          f"max {t.max} · {count(t.truncated)} at the {t.max_length} limit (truncated)"),
        _row("  real rows", f"{t.real_fraction:.1%} of the {t.max_length} stored T5 rows per sample are real tokens "
                            f"(compact text keeps those; exact stores all)"),
    ])


def _identity(s: Summary) -> str:
    i = Identity.from_dict(s.identity)
    ae = i.ae_params
    latent = f"{i.latent_channels}×{i.latent_size}×{i.latent_size}"
    rows = [
        _row("Identity", f"{s.identity_digest} · schema {i.schema_version} · code {i.code_version}"),
        _row("  shapes", f"T5 {i.t5_max_length}×{i.t5_dim} · CLIP {i.clip_dim} · image {i.image_size} px"
             f" → latent {latent} · stored as {i.storage_dtype} · text {i.text_mode or 'exact'}"),
        _row("  AE", f"ch {ae['ch']} · ch_mult {ae['ch_mult']} · res blocks {ae['num_res_blocks']} · "
             f"z {i.latent_channels} · scale {i.ae_scale_factor} · shift {i.ae_shift_factor}"),
    ]
    rows += _block("  encoders", _encoder_lines(i.encoders) or ["none recorded (synthetic data?)"])
    width = max(map(len, i.preprocessing), default=0) + 2
    settings = [f"{key:<{width}}{value}" for key, value in sorted(i.preprocessing.items())]
    if "crop" in i.preprocessing:
        settings.append(CROP_NOTE)
    rows += _block("  preprocessing", settings or ["none recorded"])
    if s.assets_dir:
        rows.append(_row("  assets", s.assets_dir))
    return "\n".join(rows)


def _encoder_lines(encoders: dict[str, dict[str, str]]) -> list[str]:
    """One aligned line per file: encoder, file, first 12 hex digits of its SHA-256."""
    files = [(name, path, digest) for name, group in sorted(encoders.items()) for path, digest in sorted(group.items())]
    name_w = max((len(n) for n, _, _ in files), default=0) + 2
    path_w = max((len(p) for _, p, _ in files), default=0) + 2
    return [
        f"{name if k == 0 or files[k - 1][0] != name else '':<{name_w}}{path:<{path_w}}{digest.removeprefix('sha256:')[:12]}"
        for k, (name, path, digest) in enumerate(files)
    ]


def _arrays(s: Summary) -> str:
    rows = [_row("Arrays", "per sample (first axis of every array = sample)")]
    for a in s.arrays:
        shape = "×".join(map(str, a["shape"])) or "scalar"
        stored = f" (as {a['dtype']})" if a["dtype"] != a["logical_dtype"] else ""
        rows.append(_row("", f"{a['name']:<14}{shape:<12}{a['logical_dtype'] + stored:<22}{a['doc']}"))
    return "\n".join(rows)


# --------------------------------------------------------------------------- verify


def verify_headline(v: VerifyResult) -> str:
    read = f"{v.stores:,} stores, {v.samples:,} samples re-read in {duration(v.seconds)}"
    if v.ok:
        return f"VERIFIED: {read}; checksums, schema, finite values and statistics all consistent"
    places = _names(dict.fromkeys(f.where for f in v.findings), limit=3)
    return f"VERIFY FAILED: {_plural(len(v.findings), 'problem')} in {places} ({read})"


def verify_remedy(v: VerifyResult, dataset: str) -> str:
    """The problem and what to do, for the lines right under the verify headline (empty when ok)."""
    if v.ok:
        return ""
    first = v.findings[0]
    stores = [w for w in dict.fromkeys(f.where for f in v.findings) if w.endswith(".zarr")]
    lines = [f"  problem: {first.where}: {_clip(first.what)}" + (f" (+{len(v.findings) - 1} more below)" if len(v.findings) > 1 else "")]
    if stores:
        paths = " ".join(f"{dataset.rstrip('/')}/shards/{name}" for name in stores[:MAX_LISTED])
        lines.append(
            f"  → delete the damaged store{'s' * (len(stores) != 1)}: rm -r {paths}"
            + (f" (+{len(stores) - MAX_LISTED} more)" if len(stores) > MAX_LISTED else "")
        )
        lines.append(
            "    then rerun the same Stage 1 command (sbatch slurm/encode_array.sbatch --input … --output "
            f"{dataset} …): it encodes only the stores that are missing"
        )
    return "\n".join(lines)


def render_findings(findings: list[Finding]) -> str:
    """Findings grouped under the store (or ``dataset``) they concern."""
    by_place: dict[str, list[str]] = {}
    for f in findings:
        by_place.setdefault(f.where, []).append(f.what)
    lines = [_row("What is wrong", f"{_plural(len(findings), 'finding')} in {_plural(len(by_place), 'place')}")]
    for where, whats in by_place.items():
        lines.append(f"  {where}")
        lines += [f"      {_clip(what)}" for what in whats]
    return "\n".join(lines)


def _problems(findings: list[Finding]) -> str:
    if not findings:
        return ""
    rows = [_row("Problems", f"{_plural(len({f.where for f in findings}), 'store')} must not be used")]
    rows += [_row("", f"{f.where}: {_clip(f.what)}") for f in findings[:MAX_LISTED]]
    return "\n".join(rows + _more(len(findings)))


# --------------------------------------------------------------------------- samples and grid


def render_samples(samples: list[Sample]) -> str:
    blocks = [_sample(s) for s in samples]
    return "\n\n".join([_row("Samples", f"{len(samples)}")] + blocks) if samples else _row("Samples", "none found")


def _sample(s: Sample) -> str:
    w, h = s.original_size
    rows = [
        f"  {s.store}[{s.index}]  key {s.key}",
        f"      caption        {s.caption!r}",
        f"      original size  {w} × {h} px · crop box (left, top, right, bottom) {tuple(s.crop_box)}",
    ]
    for name, t in s.tensors.items():
        shape = "×".join(map(str, t.shape))
        rows.append(
            f"      {name:<14}{shape:<12}{t.dtype:<10}mean {t.mean:+.4f}  std {t.std:.4f}  "
            f"min {t.min:+.4g}  max {t.max:+.4g}"
        )
    return "\n".join(rows)


def render_grid(g: GridResult, samples: int) -> str:
    check = "SHA-256 matches the identity" if g.ae_checked else "identity records no AE hash: weights unchecked"
    return "\n".join([
        _row("Grid", f"{g.path} · {g.size[0]}×{g.size[1]} px · {_plural(samples, 'sample')} decoded on {g.device}"),
        _row("", f"AE {g.ae_weights} ({check})"),
    ])


# --------------------------------------------------------------------------- helpers


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}".rstrip()


def _block(label: str, lines: list[str]) -> list[str]:
    """Lines under one label, the first beside it."""
    return [_row(label if k == 0 else "", line) for k, line in enumerate(lines)]


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _names(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit:,} more)" if len(names) > limit else "")


def _more(total: int) -> list[str]:
    return [_row("", f"… {total - MAX_LISTED:,} more (--json lists all)")] if total > MAX_LISTED else []


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
