"""Deterministic, coordinate-addressed noise, evaluated on grids with numpy.

Every value is a pure function of (world coordinates, seed, name): two tiles that overlap render the same
pixels, and a tile rendered today is the tile rendered next year. Noise on a grid is separable (rows, then
columns), so an octave costs a few full-resolution array operations however many lattice points it spans.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

_U = np.uint64
# The standard deviation of one smoothstep value-noise octave over uniform [-1, 1] lattice values (measured),
# used to scale fractal noise to about unit variance so thresholds read as "sigmas".
_OCTAVE_STD = 0.4285


def key_of(seed: int, name: str) -> int:
    """A 64-bit stream key for a named field under a seed."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little")


def _mix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U(30))
    h = h * _U(0xBF58476D1CE4E5B9)
    h = h ^ (h >> _U(27))
    h = h * _U(0x94D049BB133111EB)
    return h ^ (h >> _U(31))


def hash2(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """64-bit hash of integer lattice coordinates (broadcasting)."""
    hx = np.asarray(ix).astype(np.int64).astype(_U) * _U(0x9E3779B97F4A7C15)
    hy = np.asarray(iy).astype(np.int64).astype(_U) * _U(0xC2B2AE3D27D4EB4F)
    return _mix64(hx ^ hy ^ _U(key & 0xFFFFFFFFFFFFFFFF))


def rand2(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform [0, 1) per lattice point (float64)."""
    return (hash2(ix, iy, key) >> _U(11)).astype(np.float64) * (1.0 / 2**53)


def _axis(
    coords: np.ndarray, scale: float, period: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t = coords / scale
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    s = f * f * (3.0 - 2.0 * f)
    i1 = i0 + 1
    if period:
        i0, i1 = i0 % period, i1 % period
        lattice, inv = np.unique(np.concatenate([i0, i1]), return_inverse=True)
        n = len(coords)
        return lattice, inv[:n], inv[n:], s
    # grid axes are sorted: the lattice is one contiguous run (octaves finer than the pixels are never asked)
    lo = int(i0.min())
    return np.arange(lo, int(i0.max()) + 2), i0 - lo, i1 - lo, s


def value_noise(xs: np.ndarray, ys: np.ndarray, scale: float, key: int, period: int | None = None) -> np.ndarray:
    """Smoothstep value noise in [-1, 1] on the grid ys x xs (lattice spacing `scale` world units)."""
    lx, x0, x1, sx = _axis(xs, scale, period)
    ly, y0, y1, sy = _axis(ys, scale, period)
    v = rand2(lx[None, :], ly[:, None], key) * 2.0 - 1.0
    rows = v[y0] + (v[y1] - v[y0]) * sy[:, None]
    a, b = rows[:, x0], rows[:, x1]
    return (a + (b - a) * sx[None, :]).astype(np.float32)


@dataclass
class Grid:
    """Pixel centres of an image in world units: xs (columns) and ys (rows), evenly spaced by `step`."""

    xs: np.ndarray
    ys: np.ndarray
    step: float
    _coarse: Grid | None = field(default=None, repr=False)
    _weights: dict = field(default_factory=dict, repr=False)

    @classmethod
    def window(cls, x0: float, y0: float, width: int, height: int, step: float = 1.0) -> Grid:
        """The grid of a width x height image whose top-left pixel centre is (x0, y0)."""
        return cls(x0 + step * np.arange(width), y0 + step * np.arange(height), step)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    # Smooth fields are evaluated on a grid 4x coarser, aligned to world multiples of 4*step so that
    # overlapping windows interpolate the same samples, then upsampled linearly.
    COARSE = 4

    def coarsen(self, factor: int) -> Grid:
        """A grid `factor` times coarser, aligned to world multiples of its step, covering this one."""
        c = self.step * factor

        def axis(a: np.ndarray) -> np.ndarray:
            lo = np.floor(a[0] / c) * c
            n = int(np.ceil((a[-1] - lo) / c)) + 2
            return lo + c * np.arange(n)

        return Grid(axis(self.xs), axis(self.ys), c)

    def coarse(self) -> Grid:
        if self._coarse is None:
            self._coarse = self.coarsen(self.COARSE)
        return self._coarse

    def up(self, values: np.ndarray, src: Grid | None = None) -> np.ndarray:
        """Bilinear upsampling of values on `src` (default `coarse()`) to this grid; leading axes kept."""
        cg = src or self.coarse()
        w = self._weights.get(id(cg))
        if w is None or w[4] is not cg:  # (an id can be reused once its grid is gone)

            def weights(fine: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                t = (fine - coarse[0]) / cg.step
                i0 = np.clip(np.floor(t).astype(np.int64), 0, len(coarse) - 2)
                return i0, (t - i0).astype(np.float32)

            w = self._weights[id(cg)] = (*weights(self.ys, cg.ys), *weights(self.xs, cg.xs), cg)
        iy, fy, ix, fx, _ = w
        # columns first on the small array, then whole-row gathers (fast copies) at full size
        c0, c1 = values[..., ix], values[..., ix + 1]
        cols = c0 + (c1 - c0) * fx
        a, b = np.take(cols, iy, axis=-2), np.take(cols, iy + 1, axis=-2)
        return a + (b - a) * fy[:, None]

    def nearest(self, values: np.ndarray, src: Grid) -> np.ndarray:
        """Nearest-sample upsampling of values on `src` to this grid."""
        iy = np.clip(np.round((self.ys - src.ys[0]) / src.step).astype(np.int64), 0, len(src.ys) - 1)
        ix = np.clip(np.round((self.xs - src.xs[0]) / src.step).astype(np.int64), 0, len(src.xs) - 1)
        return values[np.ix_(iy, ix)]


def fbm(grid: Grid, scale: float, key: int, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal value noise, about unit standard deviation, first octave at `scale` world units.

    Octaves finer than the pixel spacing are dropped (they would alias); octaves much larger than the
    pixel spacing are computed on the coarse grid and upsampled once.
    """
    amps = [gain**o for o in range(octaves)]
    norm = 1.0 / (_OCTAVE_STD * float(np.sqrt(sum(a * a for a in amps))))
    coarse_min = grid.step * grid.COARSE * 6
    fine: np.ndarray | float = 0.0
    smooth: np.ndarray | float = 0.0
    cg: Grid | None = None
    for o, amp in enumerate(amps):
        s = scale / 2**o
        if s < grid.step * 1.5:
            break
        if s >= coarse_min:
            cg = cg or grid.coarse()
            smooth = smooth + amp * value_noise(cg.xs, cg.ys, s, key + o)
        else:
            fine = fine + amp * value_noise(grid.xs, grid.ys, s, key + o)
    out = grid.up(smooth) if isinstance(smooth, np.ndarray) else np.zeros(grid.shape, np.float32)
    return (out + fine) * np.float32(norm)


def smooth_field(grid: Grid, fn) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Evaluate a smooth function of (X, Y) on the coarse grid and upsample it."""
    cg = grid.coarse()
    return grid.up(np.asarray(fn(cg.xs[None, :], cg.ys[:, None]), dtype=np.float32))


# --- periodic textures ------------------------------------------------------------------------------
TEX = 256  # texture period in world units (~850 m): wider than half a tile, and mixed with aperiodic noise


@lru_cache(maxsize=8)
def textures(seed: int) -> dict[str, np.ndarray]:
    """Tileable fine textures (period TEX) for canopy, grain and mottling, about unit variance each."""
    a = np.arange(TEX, dtype=np.float64)

    def per(scale: int, name: str) -> np.ndarray:
        return value_noise(a, a, scale, key_of(seed, name), period=TEX // scale) / _OCTAVE_STD

    white = (rand2(a[None, :].astype(np.int64), a[:, None].astype(np.int64), key_of(seed, "white")) * 2 - 1) * 1.73
    white = white.astype(np.float32)
    tex = {
        # conifer crowns: a pixel or two across, dark gaps between them
        "conifer": 0.55 * white + 0.65 * per(2, "c2") + 0.35 * per(8, "c8"),
        # deciduous crowns: rounder, a few pixels across
        "deciduous": 0.3 * white + 0.75 * per(4, "d4") + 0.45 * per(2, "d2") + 0.3 * per(16, "d16"),
        "grain": white,
        "mottle": 0.8 * per(16, "m16") + 0.5 * per(8, "m8") + 0.3 * per(32, "m32"),
        "blob": 0.8 * per(32, "b32") + 0.45 * per(16, "b16") + 0.25 * per(8, "b8"),
    }
    # crowns lit from the north-west: a little relief from each texture's own slope
    for k in ("conifer", "deciduous"):
        t = tex[k]
        tex[k] = t + 0.8 * (t - np.roll(np.roll(t, 1, 0), 1, 1))
    return {k: np.tile((v / v.std()).astype(np.float32), (_REPS, _REPS)) for k, v in tex.items()}


_REPS = 4  # textures are stored tiled 4x4 so that any window up to (REPS-1)*TEX wide is a free slice


def tex_window(tex: np.ndarray, grid: Grid) -> np.ndarray:
    """The texture under a window whose pixel centres lie on whole world units (a view when possible)."""
    step = round(grid.step)
    x0 = round(grid.xs[0]) % TEX
    y0 = round(grid.ys[0]) % TEX
    h, w = grid.shape
    if tex.shape[0] >= TEX * _REPS and step >= 1 and max(h, w) * step <= TEX * (_REPS - 1):
        return tex[y0 : y0 + h * step : step, x0 : x0 + w * step : step]
    ix = np.round(grid.xs).astype(np.int64) % TEX
    iy = np.round(grid.ys).astype(np.int64) % TEX
    return tex[:TEX, :TEX][np.ix_(iy, ix)]
