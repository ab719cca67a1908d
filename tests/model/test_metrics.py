"""Metrics against cases computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyrocast.errors import InvalidInputError
from pyrocast.model.metrics import (
    classification_metrics,
    confusion,
    expected_calibration_error,
    reliability_bins,
    slice_metrics,
    wilson_interval,
)

# 8 tiles, one per ECE bin except bins 0 and 5: tp = {0, 1, 7}, fn = {2}, fp = {4}, tn = {3, 5, 6}.
Y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
P = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])


def test_hand_computed_case() -> None:
    m = classification_metrics(Y, P)
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["n"] == 8 and m["n_wildfire"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    # 14 of the 16 (wildfire, nowildfire) pairs are ranked right: 0.3 loses to 0.6 and 0.4.
    assert m["roc_auc"] == pytest.approx(14 / 16)
    # One tile per occupied bin: ECE is the mean of |p - y|.
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.2 + 0.6 + 0.1 + 0.4 + 0.3) / 8)
    assert m["brier"] == pytest.approx(1.2 / 8)
    lo, hi = m["accuracy_ci95"]
    assert lo < 0.75 < hi
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN anywhere


def test_threshold_moves_decisions() -> None:
    assert confusion(Y, P, threshold=0.25) == {"tn": 2, "fp": 2, "fn": 0, "tp": 4}
    assert classification_metrics(Y, P, threshold=0.95)["precision"] is None  # no positive decision at all


def test_ece_zero_when_calibrated_and_large_when_overconfident() -> None:
    y = np.array([1, 0, 0, 0] * 5)
    assert expected_calibration_error(y, np.full(20, 0.25)) == pytest.approx(0.0)
    # Always 100% sure of wildfire while right a quarter of the time: ECE = 0.75.
    assert expected_calibration_error(y, np.ones(20)) == pytest.approx(0.75)


def test_reliability_bins_edges() -> None:
    bins = reliability_bins(np.array([1, 0, 1]), np.array([1.0, 0.0, 0.55]))
    assert len(bins) == 10
    assert bins[9]["count"] == 1 and bins[9]["mean_prob"] == 1.0  # p == 1 falls in the last bin
    assert bins[0]["count"] == 1 and bins[0]["frac_wildfire"] == 0.0
    assert bins[5]["count"] == 1
    assert bins[3]["count"] == 0 and bins[3]["mean_prob"] is None


def test_one_class_has_no_auc() -> None:
    m = classification_metrics(np.ones(5, int), np.array([0.9, 0.8, 0.2, 0.7, 0.6]))
    assert m["roc_auc"] is None
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["specificity"] is None


def test_wilson_interval_known_value() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_slices_have_their_own_n() -> None:
    groups = ["a", "a", "b", "b", "a", "b", "a", "a"]
    s = slice_metrics(Y, P, groups)
    assert list(s) == ["a", "b"]
    assert s["a"]["n"] == 5 and s["b"]["n"] == 3
    assert s["b"]["accuracy"] == pytest.approx(2 / 3)  # tile 2 (wildfire at 0.3) is wrong


@pytest.mark.parametrize(
    ("labels", "probs", "what"),
    [
        ([1, 0], [0.5], "labels but"),
        ([], [], "no tiles"),
        ([1, 2], [0.1, 0.2], "labels must be"),
        ([1, 0], [0.1, 1.2], "within"),
        ([1, 0], [0.1, float("nan")], "finite"),
    ],
)
def test_bad_input_is_a_clear_error(labels: list, probs: list, what: str) -> None:
    with pytest.raises(InvalidInputError, match=what):
        classification_metrics(np.array(labels), np.array(probs))
