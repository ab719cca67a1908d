"""The paired champion/challenger comparison and the decision rule, on real registered stand-in models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyrocast.errors import InvalidInputError
from pyrocast.model.bundle import load_bundle
from pyrocast.registry import models
from pyrocast.registry.decide import (
    TAG_DECISION,
    TAG_REASON,
    compare_paired,
    decide,
    mcnemar_exact,
    rule,
)
from pyrocast.registry.mlflow_store import ensure_experiment, get_client
from pyrocast.settings import Settings
from tests.support.onnx_standin import make_standin_bundle, write_tiles


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    # b=10, c=2: two-sided p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)


def test_compare_paired_counts_discordant_tiles() -> None:
    y = np.array([1] * 50 + [0] * 50)
    new = y.astype(float)  # always right
    champ = np.where(np.arange(100) < 20, 1 - y, y).astype(float)  # wrong on the first 20
    c = compare_paired(y, new, champ, n_boot=500)
    assert (c.n, c.new_only_right, c.champion_only_right) == (100, 20, 0)
    assert c.new_accuracy == 1.0 and c.champion_accuracy == 0.8 and c.diff == pytest.approx(0.2)
    assert c.p_value < 1e-5
    assert 0.1 < c.ci_low < 0.2 < c.ci_high < 0.3
    assert c.better()
    # the same accuracy reached on different tiles is not better
    other = np.where(np.arange(100) >= 80, 1 - y, y).astype(float)  # wrong on the last 20
    flip = compare_paired(y, other, champ, n_boot=500)
    assert flip.diff == 0 and (flip.new_only_right, flip.champion_only_right) == (20, 20) and not flip.better()


def test_compare_paired_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(InvalidInputError, match="same tiles"):
        compare_paired(np.array([1, 0]), np.array([0.9]), np.array([0.1, 0.2]))
    with pytest.raises(InvalidInputError, match="no test tiles"):
        compare_paired(np.array([]), np.array([]), np.array([]))


def test_rule() -> None:
    assert rule("1", None, None).verdict == "champion"
    y = np.array([1, 0] * 30)
    better = compare_paired(y, y.astype(float), 1.0 - y, n_boot=300)
    d = rule("2", "1", better)
    assert d.verdict == "challenger" and "better than the champion" in d.reason and "McNemar" in d.reason
    # a small gain on few tiles is not enough: not significant
    champ = y.astype(float).copy()
    champ[:2] = 1 - champ[:2]
    small = compare_paired(y, y.astype(float), champ, n_boot=300)
    d = rule("3", "1", small)
    assert d.verdict == "rejected" and d.reason.startswith("not significantly better")
    worse = rule("4", "1", compare_paired(y, champ, y.astype(float), n_boot=300))
    assert worse.verdict == "rejected" and worse.reason.startswith("not better")


def _register(settings: Settings, tmp_path: Path, kind: str) -> tuple[str, Path]:
    client = get_client(settings)
    run = client.create_run(ensure_experiment(settings, client))
    folder = make_standin_bundle(tmp_path / f"bundle-{kind}", kind)
    return models.register_bundle(settings, run.info.run_id, folder).version, folder


def test_decide_end_to_end(mlflow_settings: Settings, tmp_path: Path) -> None:
    paths = write_tiles(tmp_path / "tiles", {"test": 40}, wildfire_share=0.7)
    labels = np.array([1 if p.parent.name == "wildfire" else 0 for p in paths])
    client = get_client(mlflow_settings)
    name = mlflow_settings.mlflow.model_name

    # 1. the first model becomes champion (a mediocre one: always says wildfire, 70% right)
    v1, b1 = _register(mlflow_settings, tmp_path, "always_fire")
    d1 = decide(mlflow_settings, v1, load_bundle(b1), paths, labels)
    assert d1.verdict == "champion" and models.aliases(mlflow_settings) == {"champion": v1}

    # 2. a clearly better one becomes challenger; the champion stays
    v2, b2 = _register(mlflow_settings, tmp_path, "good")
    d2 = decide(mlflow_settings, v2, load_bundle(b2), paths, labels)
    assert d2.verdict == "challenger", d2.reason
    assert d2.comparison is not None and d2.comparison.new_accuracy == 1.0
    assert d2.comparison.champion_accuracy == pytest.approx(0.7)
    assert models.aliases(mlflow_settings) == {"champion": v1, "challenger": v2}

    # 3. a worse one is rejected: no alias moves, the reason is on the version
    v3, b3 = _register(mlflow_settings, tmp_path, "inverted")
    d3 = decide(mlflow_settings, v3, load_bundle(b3), paths, labels)
    assert d3.verdict == "rejected" and d3.reason.startswith("not better than the champion")
    assert models.aliases(mlflow_settings) == {"champion": v1, "challenger": v2}
    mv = client.get_model_version(name, v3)
    assert mv.tags[TAG_DECISION] == "rejected" and "McNemar" in mv.tags[TAG_REASON]
    assert "Decision: rejected" in (mv.description or "")
