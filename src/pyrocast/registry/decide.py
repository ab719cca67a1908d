"""Champion/challenger: is the new model better than the champion on the same test tiles?

The rule (docs/TRAINING.md):
- no champion yet: the new version becomes `champion`;
- both models score the same test tiles (each with the precision it would be served with); per tile, each
  is right or wrong at threshold 0.5. The new version becomes `challenger` only when it is better on all
  three counts: a higher accuracy, McNemar's exact test on the discordant tiles significant at `alpha`
  (0.05), and the paired bootstrap 95% interval of the accuracy difference entirely above zero;
- otherwise it is rejected, and the reason (accuracies, p-value, interval) is recorded on the version and
  in the run. No alias moves for a rejected version.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.registry.models import TAG_DECISION, TAG_REASON, aliases, fetch_bundle, set_alias
from pyrocast.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pyrocast.model.bundle import Bundle

log = logging.getLogger(__name__)

Verdict = Literal["champion", "challenger", "rejected"]
ALPHA = 0.05
N_BOOT = 2000


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two models on the same tiles."""

    n: int
    new_accuracy: float
    champion_accuracy: float
    diff: float  # new - champion
    new_only_right: int  # discordant tiles the new model gets right
    champion_only_right: int
    p_value: float  # McNemar exact, two-sided
    ci_low: float  # bootstrap 95% interval of diff
    ci_high: float

    def better(self, alpha: float = ALPHA) -> bool:
        return self.diff > 0 and self.p_value < alpha and self.ci_low > 0


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    version: str
    champion_version: str | None = None
    comparison: Comparison | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["comparison"] = asdict(self.comparison) if self.comparison else None
        return d


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test of b against b + c)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def bootstrap_diff_ci(
    right_new: np.ndarray, right_champ: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(right_new) - mean(right_champ), resampling tiles in pairs."""
    d = right_new.astype(np.float64) - right_champ.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, d.size))  # bound memory for large test sets
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def compare_paired(
    labels: np.ndarray,
    new_probs: np.ndarray,
    champion_probs: np.ndarray,
    threshold: float = 0.5,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Comparison:
    """Compare two models' per-tile correctness on the same tiles."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    pn = np.asarray(new_probs, dtype=np.float64).reshape(-1)
    pc = np.asarray(champion_probs, dtype=np.float64).reshape(-1)
    if not (y.size == pn.size == pc.size):
        raise InvalidInputError(f"{y.size} labels, {pn.size} and {pc.size} scores: compare on the same tiles")
    if y.size == 0:
        raise InvalidInputError("no test tiles to compare the models on", "the test split is empty")
    rn = (pn >= threshold).astype(np.int64) == y
    rc = (pc >= threshold).astype(np.int64) == y
    b = int(np.sum(rn & ~rc))
    c = int(np.sum(~rn & rc))
    lo, hi = bootstrap_diff_ci(rn, rc, n_boot=n_boot, seed=seed)
    return Comparison(
        n=int(y.size),
        new_accuracy=float(rn.mean()),
        champion_accuracy=float(rc.mean()),
        diff=float(rn.mean() - rc.mean()),
        new_only_right=b,
        champion_only_right=c,
        p_value=mcnemar_exact(b, c),
        ci_low=lo,
        ci_high=hi,
    )


def rule(version: str, champion_version: str | None, comparison: Comparison | None, alpha: float = ALPHA) -> Decision:
    """Apply the champion/challenger rule to a comparison (None when there is no champion)."""
    if champion_version is None or comparison is None:
        return Decision("champion", "no champion yet: the first verified model becomes champion", version)
    c = comparison
    facts = (
        f"accuracy {c.new_accuracy:.4f} vs champion v{champion_version} {c.champion_accuracy:.4f} "
        f"on {c.n} test tiles ({c.diff * 100:+.1f} points; McNemar exact p={c.p_value:.3g} "
        f"[{c.new_only_right} vs {c.champion_only_right} discordant]; "
        f"95% bootstrap CI [{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}] points)"
    )
    if c.better(alpha):
        return Decision("challenger", f"better than the champion: {facts}", version, champion_version, c)
    why = "not better" if c.diff <= 0 else "not significantly better"
    return Decision("rejected", f"{why} than the champion: {facts}", version, champion_version, c)


def decide(
    settings: Settings,
    version: str,
    new_bundle: Bundle,
    tile_paths: list[Path],
    labels: np.ndarray,
    client: MlflowClient | None = None,
    seed: int = 0,
) -> Decision:
    """Compare a freshly registered version with the champion on `tile_paths`, move aliases, record why.

    Scores come from `pyrocast.model.evaluate.score_bundle`, i.e. from the bundles' ONNX graphs.
    """
    from pyrocast.model.evaluate import score_bundle
    from pyrocast.registry.mlflow_store import get_client

    client = client or get_client(settings)
    current = aliases(settings, client)
    champ_version = current.get("champion")
    comparison = None
    if champ_version is not None and champ_version != str(version):
        try:
            champion = fetch_bundle(settings, champ_version)
        except PyrocastError as exc:
            d = Decision("rejected", f"the champion v{champ_version} could not be fetched: {exc}", str(version))
            record(settings, d, client)
            return d
        if not tile_paths:
            d = Decision("rejected", "no test tiles to compare with the champion", str(version), champ_version)
            record(settings, d, client)
            return d
        new_p = score_bundle(new_bundle, tile_paths, new_bundle.preferred_precision)
        champ_p = score_bundle(champion, tile_paths, champion.preferred_precision)
        comparison = compare_paired(labels, new_p, champ_p, seed=seed)
    decision = rule(str(version), champ_version, comparison)
    try:
        if decision.verdict != "rejected":
            set_alias(settings, decision.verdict, str(version), client)
    except PyrocastError as exc:
        decision = Decision("rejected", f"alias not set: {exc}", str(version), champ_version, comparison)
    record(settings, decision, client)
    return decision


def record(settings: Settings, decision: Decision, client: MlflowClient) -> None:
    """Write the decision and its reason onto the model version (tags and description)."""
    name = settings.mlflow.model_name
    client.set_model_version_tag(name, decision.version, TAG_DECISION, decision.verdict)
    client.set_model_version_tag(name, decision.version, TAG_REASON, decision.reason[:4000])
    mv = client.get_model_version(name, decision.version)
    text = f"{mv.description}\n\n" if mv.description else ""
    client.update_model_version(
        name, decision.version, description=f"{text}Decision: {decision.verdict}. {decision.reason}"
    )
