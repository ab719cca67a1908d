"""Out-of-distribution warnings: does a tile look like the tiles the model was trained on?

From a bundle's drift reference (`pyrocast.monitoring.reference`: the image statistics of up to 1000 training
tiles) `Novelty.from_reference` builds one acceptance range per statistic; `Novelty.check` gives, for one tile's
statistics (`pyrocast.serving.store.image_stats`, which the gateway computes for every tile anyway), the
statistics outside their range, most striking first, each with a sentence a person understands:
"much darker than the training tiles (mean brightness 0.00; training tiles 0.14-0.57)".

How a range is made (docs/SERVING.md has the measurements behind the numbers):
- the 0.5th-99.5th percentiles of the training tiles (robust: a few odd tiles in the reference do not stretch
  it), widened on each side by `WIDEN` times that span, so that a new tile like the training ones is not
  flagged for being a little beyond the few hundred tiles seen;
- but never more than `MAX_TOWARD_LIMIT` of the way to the statistic's natural limit (0 or 1). Blank images sit
  on the limits (no variation, no colour, all dark or all bright), so they stay outside whatever the spread of
  the training tiles.
Besides the store's columns one statistic is derived from them: `colour_coherence`, the luma's standard
deviation over the channels' root-mean-square one. Photographs' channels rise and fall together (about 0.9-1.1);
independent noise per channel gives 0.67 while every single column can look ordinary. It is judged only where
the tile varies at all (channel spread above `COHERENCE_MIN_STD`: a flat tile's ratio is JPEG noise).

Size and shape are judged from the stored width and height, by ratio (`SIZE_BELOW`, `SIZE_ABOVE`, `ASPECT_ABOVE`):
the other statistics are taken on a 64 px thumbnail, where an 8 px image or a 350 x 20 strip looked ordinary.

Plain functions and a small frozen class; the ranges travel as JSON (`to_dict`/`from_dict`), so the classifier,
which holds the bundle, can hand them to the gateway in `/model/info`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyrocast.imaging import TRANSPARENT
from pyrocast.serving.store import STAT_COLUMNS

PERCENTILES = (0.5, 99.5)
WIDEN = 1.0  # the margin on each side, as a share of the training tiles' percentile span
MAX_TOWARD_LIMIT = 0.75  # a margin never covers more than this share of the distance to the natural limit
MIN_MARGIN = 0.01  # a reference of near-identical tiles still accepts their JPEG-level jitter
MIN_ROWS = 20  # fewer reference tiles say too little about what is ordinary: no check
COHERENCE = "colour_coherence"
COHERENCE_MIN_STD = 0.03  # below this channel spread (0-1 units) the tile is too flat to judge its colours
# sqrt(3) * |Rec. 601 luma weights|: the largest possible luma std over the channels' RMS std
COHERENCE_MAX = math.sqrt(3 * (0.299**2 + 0.587**2 + 0.114**2))
# Size and shape, from the stored width and height: the pixels' statistics are taken on a 64 px thumbnail, so an
# 8 px thumbnail of a tile or a 350 x 20 strip looked ordinary, while the model sees them enlarged or squashed.
SHORT_SIDE = "short_side"
ASPECT = "aspect"
SIZE_BELOW = 0.5  # a shorter side under half the training tiles' smallest is flagged...
SIZE_ABOVE = 4.0  # ...and one over 4x their largest (it covers more ground, or another ground resolution)
TRANSPARENT_MIN = 0.01  # a share of transparent pixels above this is said (a few edge pixels are not)
ASPECT_ABOVE = 1.5  # long side / short side beyond 1.5x the training tiles' (and beyond 1.5 for square tiles)
STATS = (*STAT_COLUMNS, COHERENCE, SHORT_SIDE, ASPECT)


@dataclass(frozen=True)
class Words:
    """How to say a statistic to a person: its name, the phrase below and above its range, percent or not, and
    what a tile there may be (said after the numbers)."""

    name: str
    below: str
    above: str
    percent: bool = False
    pixels: bool = False
    maybe_below: str = ""
    maybe_above: str = ""


WORDS: dict[str, Words] = {
    "mean_r": Words("mean red", "much less red", "much redder"),
    "mean_g": Words("mean green", "much less green light", "much more green light"),
    "mean_b": Words("mean blue", "much less blue", "much bluer"),
    "std_r": Words("red variation", "much more uniform in red", "much more varied in red"),
    "std_g": Words("green variation", "much more uniform in green", "much more varied in green"),
    "std_b": Words("blue variation", "much more uniform in blue", "much more varied in blue"),
    "brightness": Words("mean brightness", "much darker", "much brighter"),
    "contrast": Words("contrast", "much flatter (less contrast)", "much more contrasted"),
    "saturation": Words("saturation", "much greyer (less colourful)", "much more colourful"),
    "greenness": Words("green share", "much less green (vegetation)", "much greener"),
    "bright_fraction": Words(
        "very bright pixels",
        "far fewer very bright pixels",
        "far more very bright pixels",
        percent=True,
        maybe_above="cloud, snow, glare?",
    ),
    "dark_fraction": Words(
        "very dark pixels",
        "far fewer very dark pixels",
        "far more very dark pixels",
        percent=True,
        maybe_above="shadow, water, blank?",
    ),
    "sharpness": Words("sharpness", "much smoother or blurrier", "much sharper or grainier"),
    COHERENCE: Words(
        "colour coherence",
        "colours much less in step",
        "colours much more in step",
        maybe_below="noise, a drawing or a made-up pattern rather than a photograph?",
    ),
    SHORT_SIDE: Words(
        "shorter side",
        "much smaller",
        "much larger",
        pixels=True,
        maybe_below="the model sees it enlarged and blurred",
        maybe_above="more ground, or another resolution, than a tile?",
    ),
    ASPECT: Words("long/short side ratio", "squarer", "much more elongated", maybe_above="the model sees it squashed"),
}
# The statistic that sums a channel statistic up for people (see `sentences`).
SUMMARY = {**{f"mean_{c}": "brightness" for c in "rgb"}, **{f"std_{c}": "contrast" for c in "rgb"}}
LIMITS: dict[str, tuple[float, float]] = {**{s: (0.0, 1.0) for s in STAT_COLUMNS}, COHERENCE: (0.0, COHERENCE_MAX)}


def coherence(stats: Mapping[str, Any]) -> float | None:
    """The luma's std over the channels' RMS std (see the module doc), or None for a tile too flat to judge."""
    try:
        rms = math.sqrt((float(stats["std_r"]) ** 2 + float(stats["std_g"]) ** 2 + float(stats["std_b"]) ** 2) / 3)
        contrast = float(stats["contrast"])
    except (KeyError, TypeError, ValueError):
        return None
    if not rms >= COHERENCE_MIN_STD:  # also NaN
        return None
    return contrast / rms


@dataclass(frozen=True)
class Range:
    """One statistic's acceptance range (`low`-`high`) and what the training tiles span (`seen_*`, shown)."""

    stat: str
    low: float
    high: float
    seen_low: float
    seen_high: float


@dataclass(frozen=True)
class Finding:
    """A statistic outside its range: which, its value, which side, how far (in training spans), the sentence."""

    stat: str
    value: float
    side: str  # "below" | "above"
    severity: float
    message: str


def widened(stat: str, values: Sequence[float]) -> Range | None:
    """The acceptance range of one statistic from its training values (None with fewer than `MIN_ROWS`)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < MIN_ROWS:
        return None
    lo, hi = (float(x) for x in np.percentile(v, PERCENTILES))
    if stat == SHORT_SIDE:  # sizes are judged by ratio: tiles of one dataset often all have one size
        return Range(stat, round(SIZE_BELOW * lo, 3), round(SIZE_ABOVE * hi, 3), round(lo, 3), round(hi, 3))
    if stat == ASPECT:
        return Range(stat, 1.0, round(max(ASPECT_ABOVE * hi, ASPECT_ABOVE), 3), round(lo, 3), round(hi, 3))
    limit_lo, limit_hi = LIMITS[stat]
    margin = max(WIDEN * (hi - lo), MIN_MARGIN)
    # Capped toward the limit: a value on the limit (a blank tile) is outside unless training tiles reach it.
    low = lo - min(margin, MAX_TOWARD_LIMIT * max(lo - limit_lo, 0.0))
    high = hi + min(margin, MAX_TOWARD_LIMIT * max(limit_hi - hi, 0.0))
    return Range(stat, round(low, 6), round(high, 6), round(lo, 6), round(hi, 6))


def _size(stats: Mapping[str, Any]) -> tuple[float, float] | None:
    try:
        w, h = float(stats["width"]), float(stats["height"])
    except (KeyError, TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 and math.isfinite(w + h) else None


def _value(stats: Mapping[str, Any], stat: str) -> float | None:
    if stat == COHERENCE:
        return coherence(stats)
    if stat in (SHORT_SIDE, ASPECT):
        size = _size(stats)
        if size is None:
            return None
        return min(size) if stat == SHORT_SIDE else max(size) / min(size)
    try:
        x = float(stats[stat])
    except (KeyError, TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(x: float, percent: bool, pixels: bool = False) -> str:
    if pixels:
        return f"{x:.0f} px"
    return f"{100 * x:.0f}%" if percent else f"{x:.2f}"


def describe(r: Range, value: float) -> Finding:
    """The finding for `value` outside `r`: side, severity (distance beyond the training span, in spans)."""
    words = WORDS[r.stat]
    below = value < r.low
    span = max(r.seen_high - r.seen_low, MIN_MARGIN)
    severity = ((r.seen_low - value) if below else (value - r.seen_high)) / span
    seen = f"{_fmt(r.seen_low, words.percent, words.pixels)}-{_fmt(r.seen_high, words.percent, words.pixels)}"
    if r.seen_low == r.seen_high:
        seen = _fmt(r.seen_low, words.percent, words.pixels)
    maybe = words.maybe_below if below else words.maybe_above
    message = (
        f"{words.below if below else words.above} than the training tiles "
        f"({words.name} {_fmt(value, words.percent, words.pixels)}; training tiles {seen})"
        + (f": {maybe}" if maybe else "")
    )
    return Finding(r.stat, value, "below" if below else "above", round(severity, 3), message)


def sentences(findings: Sequence[Finding]) -> list[str]:
    """Findings as sentences for people: a channel's finding is left out when its summary (brightness for the mean
    colours, contrast for their variation) says the same on the same side (a black tile is darker; its being less
    red, green and blue adds nothing)."""
    said = {(f.stat, f.side) for f in findings}
    return [f.message for f in findings if (SUMMARY.get(f.stat), f.side) not in said]


def transparency(stats: Mapping[str, Any]) -> Finding | None:
    """A finding for an image with transparent pixels (drawn on white, they read as cloud or snow), else None.

    No training range is needed: a satellite tile has no transparency at all."""
    try:
        share = float(stats.get(TRANSPARENT) or 0.0)
    except (TypeError, ValueError):
        return None
    if not share > TRANSPARENT_MIN:
        return None
    message = (
        f"{100 * share:.0f}% of the image is transparent (drawn on white here): a satellite tile has no transparency"
    )
    return Finding("transparent", share, "above", 1000.0 + share, message)  # `check` says it first


@dataclass(frozen=True)
class Novelty:
    """The acceptance ranges of one model's training tiles; `check` a tile's statistics against them."""

    ranges: tuple[Range, ...]
    tiles: int

    @classmethod
    def from_reference(cls, rows: Sequence[Mapping[str, Any]] | None) -> Novelty | None:
        """From a bundle's reference rows (`read_reference`); None without a usable reference (old bundles)."""
        if not rows or len(rows) < MIN_ROWS:
            return None
        ranges = []
        for stat in STATS:
            values = [x for x in (_value(r, stat) for r in rows) if x is not None]
            r = widened(stat, values)
            if r is not None:
                ranges.append(r)
        return cls(tuple(ranges), len(rows)) if ranges else None

    def check(self, stats: Mapping[str, Any]) -> list[Finding]:
        """The statistics of a tile outside their ranges, most striking first (empty: in distribution)."""
        out = []
        see_through = transparency(stats)
        if see_through is not None:
            out.append(see_through)
        for r in self.ranges:
            x = _value(stats, r.stat)
            if x is not None and not r.low <= x <= r.high:
                out.append(describe(r, x))
        # Transparency first whatever the others' severity: it explains them (a size's severity, in pixels over a
        # one-size training span, reached tens of thousands).
        out.sort(key=lambda f: (f.stat != "transparent", -f.severity))
        return out

    def warnings(self, stats: Mapping[str, Any]) -> list[str]:
        """`check` as sentences for people (`sentences`)."""
        return sentences(self.check(stats))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the classifier's `/model/info` key `novelty`)."""
        return {
            "tiles": self.tiles,
            "percentiles": list(PERCENTILES),
            "ranges": {r.stat: [r.low, r.high, r.seen_low, r.seen_high] for r in self.ranges},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Novelty | None:
        """Back from `to_dict`; None for anything else (a classifier without a reference, or another shape)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("ranges"), Mapping):
            return None
        ranges = []
        for stat, vals in data["ranges"].items():
            if stat not in WORDS or not isinstance(vals, Sequence) or len(vals) != 4:
                continue  # a statistic this version does not know how to say: skipped, not guessed
            try:
                low, high, seen_low, seen_high = (float(x) for x in vals)
            except (TypeError, ValueError):
                continue
            if all(math.isfinite(x) for x in (low, high, seen_low, seen_high)) and low <= high:
                ranges.append(Range(stat, low, high, seen_low, seen_high))
        tiles = data.get("tiles")
        return cls(tuple(ranges), int(tiles) if isinstance(tiles, int) else 0) if ranges else None
