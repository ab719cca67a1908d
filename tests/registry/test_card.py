"""The model card renders what a reader needs: use, data, metrics, slices, limits."""

from __future__ import annotations

from pyrocast.registry.card import render_card


def test_card_holds_metrics_slices_lineage_and_limits() -> None:
    md = render_card(
        name="pyrocast-wildfire",
        version="3",
        metrics={"n": 55, "accuracy": 0.9636, "accuracy_ci95": [0.877, 0.99], "roc_auc": None, "ece": 0.041},
        slices={"latitude_band": {"45-47": {"n": 30, "accuracy": 0.97, "recall": 1.0, "precision": 0.95}}},
        behaviour={"flip_agreement": 0.98, "details": {"x": 1}},
        params={"lr": 0.003, "size": 64, "weight_decay": 2.5e-05},
        lineage={"pyrocast.data_version": "ab12cd", "pyrocast.git_commit": "c" * 40, "pyrocast.zenml_run_id": "z"},
        decision={"verdict": "challenger", "reason": "better than the champion"},
    )
    assert md.startswith("# Model card: pyrocast-wildfire version 3")
    assert "| accuracy | 0.9636 |" in md and "| accuracy_ci95 | [0.877, 0.990] |" in md
    assert "| roc_auc | n/a |" in md
    assert "| latitude_band | 45-47 | 30 | 0.9700 |" in md
    assert "| data version (DVC) | ab12cd |" in md and "ab12cd" in md
    assert "**challenger**: better than the champion" in md
    assert "## Intended use" in md and "## Limits" in md
    assert "| weight_decay | 2.50e-05 |" in md and "| lr | 0.0030 |" in md
    assert "details" not in md  # nested values are left to the JSON artifacts
