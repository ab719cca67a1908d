"""`pyrocast data show`: what the dataset holds (split x class x source), its version, its quarantine."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from pyrocast.data.layout import CLASSES, SPLITS, UNSPLIT, Dataset
from pyrocast.data.quarantine import iter_reasons
from pyrocast.errors import PyrocastError
from pyrocast.report import Report
from pyrocast.settings import Settings


class SummaryReport(Report):
    """A Report whose table is the split x source x class matrix, followed by the usual facts."""

    def render(self, console: Console) -> None:
        counts: list[dict[str, Any]] = self.details.get("counts", [])
        if counts:
            t = Table(title=self.title, title_justify="left")
            t.add_column("split")
            t.add_column("source")
            for c in CLASSES:
                t.add_column(c, justify="right")
            t.add_column("total", justify="right")
            by: dict[tuple[str, str], Counter[str]] = {}
            for row in counts:
                by.setdefault((row["split"], row["source"]), Counter())[row["label"]] += row["tiles"]
            totals: Counter[str] = Counter()
            for (split, source), per in by.items():
                totals.update(per)
                t.add_row(split, source, *(str(per[c]) for c in CLASSES), str(sum(per.values())))
            t.add_section()
            t.add_row("all", "", *(str(totals[c]) for c in CLASSES), str(sum(totals.values())), style="bold")
            console.print(t)
            # The matrix already says what the per-split and per-source facts say.
            shown = {k: v for k, v in self.facts.items() if k not in (*SPLITS, UNSPLIT, "sources")}
            Report("", shown).render(console)
        else:
            super().render(console)


def _version(settings: Settings) -> tuple[str, dict[str, Any] | None]:
    """A one-line description of the current DVC version, and its full record."""
    try:
        from pyrocast.data.version import current_version
    except ImportError:
        return "unavailable (versioning is not installed)", None
    try:
        v = current_version(settings)
    except PyrocastError as exc:
        return f"unknown ({exc.message})", None
    if v is None:
        return "none recorded yet (`pyrocast data version`)", None
    bits = [str(v.get("id", "?"))]
    if v.get("created"):
        bits.append(f"recorded {v['created']}")
    bits.append("pushed" if v.get("pushed") else "not pushed")
    if v.get("modified"):
        bits.append("the dataset changed since: record a new version")
    return ", ".join(bits), v


def summarize(settings: Settings) -> Report:
    """Counts per split x class x source, the current version, and what the quarantine holds."""
    try:
        ds = Dataset(settings.dataset_dir)
    except (KeyError, TypeError, ValueError) as exc:
        raise PyrocastError(
            f"the manifest of {settings.dataset_dir} is damaged ({type(exc).__name__}: {exc})",
            "run `pyrocast data validate` to see what is wrong, or restore a version",
        ) from None
    counts = ds.counts()
    order = {s: i for i, s in enumerate((*SPLITS, UNSPLIT))}
    rows = [
        {"split": s, "label": label, "source": src, "tiles": n}
        for (s, label, src), n in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0]))
    ]
    rep = SummaryReport(f"Dataset: {len(ds)} tiles")
    rep.add("dataset", str(settings.dataset_dir))
    if not len(ds):
        rep.add("next step", "render (`pyrocast data synth`) or import (`pyrocast data import-kaggle`) tiles")
    per_split: dict[str, Counter[str]] = {}
    per_source: Counter[str] = Counter()
    for (s, label, src), n in counts.items():
        per_split.setdefault(s, Counter())[label] += n
        per_source[src] += n
    for s in sorted(per_split, key=lambda s: order.get(s, 99)):
        rep.add(s, " · ".join(f"{c} {per_split[s][c]}" for c in CLASSES))
    if per_source:
        rep.add("sources", " · ".join(f"{src} {n}" for src, n in sorted(per_source.items())))
    line, version = _version(settings)
    rep.add("version", line)
    reasons = Counter(r.get("code", "?") for r in iter_reasons(settings))
    q = sum(reasons.values())
    rep.add("quarantine", f"{q} file(s) in {settings.quarantine_dir}" if q else "empty")
    rep.details.update(
        {
            "tiles": len(ds),
            "counts": rows,
            "by_split": {s: dict(c) for s, c in per_split.items()},
            "by_source": dict(per_source),
            "current_version": version,
            "quarantine_by_code": dict(reasons),
        }
    )
    return rep
