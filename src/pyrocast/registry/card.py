"""The model card: what a registered model is, what it was trained on, how well it does, where it fails.

Rendered as markdown from plain dicts (the evaluation's metrics and slices, lineage tags, parameters), logged
with every run as `model_card.md` (next to `bundle/`, so the registered version's run holds it) and written
again once the decision is known.
"""

from __future__ import annotations

from typing import Any

INTENDED_USE = (
    "Screening aid: estimates P(wildfire), the chance that a 350x350 px satellite tile (Mapbox "
    "satellite-v9, zoom 15) of southern Canada shows a place where a wildfire was recorded. It ranks places "
    "for attention; it is not a fire detector, not a forecast of when a fire starts, and not a basis for "
    "evacuation or insurance decisions on its own."
)
LIMITS = (
    "Trained on few tiles of one region (Quebec) and one imagery style; other regions, seasons, sensors or "
    "zoom levels shift the input and the scores (the monitor watches for that drift).",
    "The labels mark where fires were recorded, not burn risk as such; towns and farmland dominate the "
    "no-wildfire class, so the model partly learns land use.",
    "Test metrics come from a spatially held-out split of the same source; their 95% intervals are wide "
    "when the test split is small.",
    "Scores are calibrated only as far as the calibration error below says; treat 0.5 as a ranking "
    "threshold, not a probability guarantee.",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        # learning rates and weight decays are tiny: 4 decimals would print them as 0.0000
        return f"{v:.2e}" if v and abs(v) < 1e-3 else f"{v:.4f}"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| | |", "| --- | --- |"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return out


def render_card(
    *,
    name: str,
    version: str | None,
    metrics: dict[str, Any],
    slices: dict[str, dict[str, dict[str, Any]]] | None = None,
    behaviour: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    lineage: dict[str, str] | None = None,
    export: dict[str, Any] | None = None,
    decision: dict[str, Any] | None = None,
) -> str:
    """The model card as markdown.

    `slices` maps a slice family (latitude band, brightness tercile, source) to {group: metrics};
    `lineage` holds the `pyrocast.*` tags (git commit, data version, ZenML run id, profile, seed).
    """
    lineage = lineage or {}
    lines = [f"# Model card: {name}" + (f" version {version}" if version else ""), ""]
    lines += ["## Intended use", "", INTENDED_USE, ""]
    lines += ["## Training data and lineage", ""]
    lines += _table(
        [
            ("data version (DVC)", lineage.get("pyrocast.data_version", "unversioned")),
            ("git commit", lineage.get("pyrocast.git_commit", "unknown")),
            ("uncommitted changes", lineage.get("pyrocast.git_dirty", "unknown")),
            ("ZenML run id", lineage.get("pyrocast.zenml_run_id", "unknown")),
            ("profile", lineage.get("pyrocast.profile", "unknown")),
            ("seed", lineage.get("pyrocast.seed", "unknown")),
        ]
    )
    if params:
        lines += ["", "## Configuration (tuned)", ""]
        lines += _table(sorted(params.items()))
    lines += ["", "## Test metrics", ""]
    keys = ("n", "accuracy", "accuracy_ci95", "precision", "recall", "f1", "roc_auc", "ece", "brier")
    lines += _table([(k, metrics.get(k)) for k in keys if k in metrics])
    if slices:
        lines += [
            "",
            "## Slices",
            "",
            "| slice | group | n | accuracy | recall | precision |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for family, groups in slices.items():
            for group, m in groups.items():
                lines.append(
                    f"| {family} | {group} | {_fmt(m.get('n'))} | {_fmt(m.get('accuracy'))} | "
                    f"{_fmt(m.get('recall'))} | {_fmt(m.get('precision'))} |"
                )
    if behaviour:
        lines += ["", "## Behavioural checks", ""]
        lines += _table(sorted((k, v) for k, v in behaviour.items() if not isinstance(v, dict | list)))
    if export:
        lines += ["", "## Serving", ""]
        lines += _table(sorted((k, v) for k, v in export.items() if not isinstance(v, dict | list)))
    if decision:
        lines += ["", "## Registry decision", "", f"**{decision.get('verdict', '?')}**: {decision.get('reason', '')}"]
    lines += ["", "## Limits", ""]
    lines += [f"- {x}" for x in LIMITS]
    return "\n".join(lines) + "\n"
