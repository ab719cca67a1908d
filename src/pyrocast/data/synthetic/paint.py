"""How things look: colours, canopy textures, fields, streets, houses, water and roads, at zoom 15.

`paint` turns a grid of world coordinates into an RGB float image plus a per-pixel "kind" map (used by
the winter scenario to decide where snow lies). The palette was matched by eye to Mapbox satellite tiles
of Quebec; the variation between places (tone, vegetation vigour, leafy or bare suburbs, green or tilled
fields, lichen-bright burns) is deliberate, so that no single colour statistic tells the classes apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pyrocast.data.synthetic.geography import distance, segments_near
from pyrocast.data.synthetic.landscape import Landscape, Zones
from pyrocast.data.synthetic.noise import Grid, hash2, key_of, tex_window, textures


def C(r: float, g: float, b: float) -> np.ndarray:
    """A colour shaped (3, 1, 1): images are planar (3, H, W) float32, which keeps masked writes fast."""
    return np.array([r, g, b], np.float32).reshape(3, 1, 1)


# --- palette ------------------------------------------------------------------------------------------
CONIFER, CONIFER_AMP = C(36, 52, 36), C(15, 19, 14)
DECIDUOUS, DECIDUOUS_AMP = C(60, 84, 44), C(18, 23, 14)
SHRUB = C(96, 112, 66)
WETLAND_A, WETLAND_B, POOL = C(122, 118, 80), C(84, 95, 58), C(38, 48, 44)
BURN_RECENT, SNAG = C(74, 64, 52), C(118, 110, 98)
LICHEN, REGROWTH = C(172, 168, 142), C(78, 102, 52)
CUT, SOIL = C(108, 114, 70), C(138, 120, 88)
ROCK = C(148, 146, 132)
DEEP, SHALLOW, SHORE = C(18, 33, 40), C(52, 78, 72), C(150, 140, 112)
ASPHALT, GRAVEL, VERGE = C(128, 128, 124), C(156, 146, 118), C(104, 118, 72)
LAWNS = (C(92, 110, 64), C(108, 118, 76), C(120, 124, 88), C(84, 102, 58), C(100, 106, 78))
ROOFS = (
    C(78, 76, 78),
    C(96, 92, 92),
    C(150, 146, 140),
    C(186, 182, 176),
    C(118, 92, 80),
    C(64, 64, 70),
    C(206, 204, 198),
    C(110, 100, 92),
    C(140, 112, 96),
    C(84, 88, 96),
)
BIG_ROOFS = (C(196, 196, 192), C(168, 168, 164), C(220, 220, 216), C(140, 140, 138), C(120, 110, 100))
PARKING, CAR = C(112, 112, 108), C(180, 180, 185)
POOLBLUE = C(80, 168, 186)
TREE = C(42, 62, 36)
CROPS = (  # (colour, weight)
    (C(124, 134, 80), 3.0),  # hay
    (C(86, 108, 54), 3.0),  # green crop
    (C(58, 78, 44), 2.5),  # dark crop
    (C(142, 122, 94), 2.0),  # bare soil
    (C(170, 158, 120), 2.5),  # ripe / stubble
    (C(104, 120, 72), 2.0),  # pasture
    (C(98, 86, 68), 1.0),  # ploughed, wet
)
_CROP_COLS = np.concatenate([c for c, _ in CROPS], axis=1)[:, :, 0]  # (3, n)
_CROP_CDF = np.cumsum([w for _, w in CROPS]) / sum(w for _, w in CROPS)
_ROOF_COLS = np.concatenate(ROOFS, axis=1)[:, :, 0]
_BIG_COLS = np.concatenate(BIG_ROOFS, axis=1)[:, :, 0]
_LAWN_COLS = np.concatenate(LAWNS, axis=1)[:, :, 0]

# kinds (for snow and debugging)
FOREST, WETLAND, BURN, CLEARING, FIELD, LAWN, ROOF, PAVED, WATER = range(9)


# Full-resolution detail added after the half-resolution paint: (canopy, grain) amplitude per kind.
DETAIL = np.zeros((16, 2), np.float32)
DETAIL[[FOREST, WETLAND, BURN, CLEARING, FIELD, LAWN, ROOF, PAVED, WATER]] = [
    (13, 3),
    (6, 4),
    (9, 4),
    (7, 4),
    (2, 3),
    (6, 3),
    (1, 3),
    (1, 3),
    (0, 1.5),
]


def add_detail(img: np.ndarray, kind: np.ndarray, grid: Grid, seed: int) -> np.ndarray:
    """Add full-resolution crowns and grain (by kind) to an image upsampled from a coarser paint."""
    tex = textures(seed)
    crowns = tex_window(tex["conifer"], grid)
    grain = tex_window(tex["grain"], grid)
    amp = DETAIL[kind]
    return img + (crowns * amp[..., 0] + grain * amp[..., 1]) * C(0.9, 1.0, 0.75)


@dataclass(frozen=True)
class LandLook:
    """Scenario knobs that act on the land itself (the `north` scenario)."""

    lake_shift: float = 0.0
    conifer: float = 0.0
    lichen: float = 0.0


def _u(h: np.ndarray, bits: int = 0) -> np.ndarray:
    """A uniform [0, 1) float from 16 bits of a hash (several independent draws per hash)."""
    return ((h >> np.uint64(bits)) & np.uint64(0xFFFF)).astype(np.float32) / 65536.0


def _put(img: np.ndarray, mask: np.ndarray, col: np.ndarray) -> None:
    """img[mask] = col, in place. Branch-free arithmetic: several times faster than a masked copy on the
    fragmented masks of houses and crowns."""
    d = col - img
    d *= mask
    img += d


def _kind(kind: np.ndarray, mask: np.ndarray, k: int) -> None:
    """kind[mask] = k, in place (uint8 arithmetic wraps, so this is exact and branch-free)."""
    kind += (np.uint8(k) - kind) * mask


def _mix(img: np.ndarray, col: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return img + (col - img) * alpha


def _pal(cols: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Pick a palette colour per pixel from a uniform [0, 1) field: (3, H, W)."""
    return np.take(cols, np.minimum((u * cols.shape[1]).astype(np.intp), cols.shape[1] - 1), axis=1)


def paint(
    ls: Landscape, grid: Grid, look: LandLook = LandLook(), towns: bool = True
) -> tuple[np.ndarray, np.ndarray, Zones]:
    """Planar RGB float32 image (3, H, W), kind map (H, W) uint8 and the zones of a grid.

    With towns=False, suburbs and cores are left to the caller (`paint_town` at a finer grid).
    """
    H, W = grid.shape
    T = _textures(ls, grid)
    z = ls.zones(grid)
    kind = np.full((H, W), FOREST, np.uint8)
    remote = 1.0 - z.town_reach
    north = ls.macro(grid, "north")
    wild = ~z.developed

    # --- forest everywhere first: conifer share varies with place and latitude ----------------------
    cf = np.clip(0.45 + 0.32 * ls.fbm(grid, 1600, "conifer", 3) + 0.35 * north + look.conifer, 0, 1)
    df = 1.0 - cf
    vigour = ls.fbm(grid, 2600, "vigour", 2)
    canopy = T["deciduous"] * df + T["conifer"] * cf
    img = DECIDUOUS * df + CONIFER * cf + vigour * C(5, 9, 3) + canopy * (DECIDUOUS_AMP * df + CONIFER_AMP * cf)
    img = img * (1.0 + 0.14 * ls.fbm(grid, 5000, "forest-tone", 2))  # stand age, density and sun vary by place
    # shrubby openings and meadows inside the forest
    shrub = ls.fbm(grid, 260, "shrub", 3) + 0.35 * T["mottle"]
    # Openings have ragged edges and keep scattered trees: the canopy texture cuts into every blend.
    ragged = 0.45 * T["deciduous"]
    op = np.clip((shrub - 1.25) * 2.0 - np.maximum(ragged, 0), 0, 0.95)
    img = _mix(img, SHRUB + T["mottle"] * C(12, 12, 10) + T["blob"] * C(8, 8, 4) + T["grain"] * C(5, 5, 5), op)

    # --- wetlands: bogs where moisture is high, fens along lake shores -------------------------------
    water, depth, lake = ls.water(grid, z, look.lake_shift)
    moist = ls.fbm(grid, 900, "moist", 3)
    wet_a = np.clip((moist - 1.1) * 4, 0, 1) + np.clip((lake + 0.2) * 6, 0, 1) * (moist > 0.5)
    wet_a = np.where(wild, np.clip(wet_a - np.maximum(ragged - 0.2, 0), 0, 1), 0)
    wet = wet_a > 0
    if wet.any():
        wcol = WETLAND_A + (WETLAND_B - WETLAND_A) * np.clip(0.5 + 0.45 * T["mottle"] + 0.25 * T["blob"], 0, 1)
        wcol = wcol + T["grain"] * C(4, 4, 4) + T["deciduous"] * C(5, 5, 3)
        _put(wcol, T["blob"] > 1.55, POOL)
        _put(wcol, T["conifer"] > 1.6, CONIFER)  # scattered black spruce
        img = _mix(img, wcol, wet_a)
        _kind(kind, wet_a > 0.5, WETLAND)

    # --- burn scars: remote land only; recent ones charcoal, old ones lichen and regrowth -------------
    burn_f = ls.fbm(grid, 1700, "burn", 3) + 0.5 * remote - 0.5
    burn_a = np.where(wild, np.clip((burn_f - 0.55) * 5 - np.maximum(ragged - 0.3, 0), 0, 1), 0)
    if (burn_a > 0).any():
        old = np.clip((ls.fbm(grid, 6000, "burn-age", 2) + 0.9) * 2, 0, 1)  # most scars are years old
        lich = np.clip((T["mottle"] + 0.1 + look.lichen) * 1.6, 0, 1)
        old_col = REGROWTH + (LICHEN - REGROWTH) * lich + T["deciduous"] * C(10, 10, 10)
        new_col = (
            BURN_RECENT + T["mottle"] * C(10, 10, 10) + np.clip(T["conifer"] - 0.8, 0, 2) * (SNAG - BURN_RECENT) * 0.6
        )
        img = _mix(img, new_col + (old_col - new_col) * old, burn_a)
        _kind(kind, burn_a > 0.5, BURN)

    # --- rock and lichen outcrops (more of them up north) ----------------------------------------------
    rock_f = ls.fbm(grid, 320, "rock", 3) + 0.35 * T["mottle"] + 0.5 * north + look.lichen
    rock_a = np.where(wild, np.clip((rock_f - 1.85) * 3, 0, 1), 0)
    if (rock_a > 0).any():
        img = _mix(img, ROCK + T["mottle"] * C(12, 12, 12) + T["grain"] * C(6, 6, 6), rock_a)
        _kind(kind, rock_a > 0.5, CLEARING)

    # --- clear-cuts: blocks in logging areas, ragged straight edges --------------------------------------
    logging = ls.fbm(grid, 7000, "logging", 2) + 0.4 * remote
    zone = wild & (logging > 0.85)
    if zone.any():
        wx = grid.xs[None, :] + 25 * ls.fbm(grid, 120, "cut-wx", 2)
        wy = grid.ys[:, None] + 25 * ls.fbm(grid, 120, "cut-wy", 2)
        cut = zone & (_u(hash2(np.floor(wx / 190), np.floor(wy / 150), ls.key("cut"))) < 0.2) & (ragged < 0.55)
        ccol = (
            CUT
            + T["mottle"] * C(14, 14, 12)
            + np.clip(T["blob"], 0, 2) * (SOIL - CUT) * 0.5
            + T["deciduous"] * C(6, 8, 4)
        )
        _put(ccol, T["deciduous"] > 1.7, DECIDUOUS)  # left-over trees
        _put(img, cut, ccol)
        _kind(kind, cut, CLEARING)

    if z.farm.any():
        _paint_farm(ls, grid, z, T, img, kind)

    # --- water -----------------------------------------------------------------------------------------
    tint = ls.fbm(grid, 9000, "water-tint", 2)
    wcol = SHALLOW + (DEEP - SHALLOW) * depth + tint * C(6, 5, 1) + T["mottle"] * C(2, 2, 2)
    _put(img, wild & ~water & (lake > -0.025), SHORE + T["grain"] * C(8, 8, 8))
    streams = (
        ~z.core & (np.abs(ls.fbm(grid, 2400, "stream", 3)) < 0.006) & (ls.fbm(grid, 9000, "stream-mask", 2) > -0.2)
    )
    _put(wcol, streams & (depth < 0.3), SHALLOW * 0.75)
    water |= streams
    _put(img, water, wcol)
    _kind(kind, water, WATER)

    # --- roads and corridors -----------------------------------------------------------------------------
    land = ~water
    fine = grid.step <= 16  # trails and corridors vanish on far-zoom map tiles
    if fine:
        trail_d = ls.fbm(grid, 7000, "trail-density", 2)
        trails = land & ~z.core & ~z.suburb & (np.abs(ls.fbm(grid, 1100, "trail", 2)) < 0.012) & (trail_d > -0.3)
        _put(img, trails, GRAVEL + T["grain"] * C(8, 8, 8))
        _kind(kind, trails, PAVED)
    box = (grid.xs[0], grid.ys[0], grid.xs[-1], grid.ys[-1])
    pl = segments_near(ls.powerlines, *box, pad=40.0) if fine else []
    if pl:
        corr = land & ~z.core & (distance(grid.xs, grid.ys, pl, relative=True) < 1.0)
        _put(img, corr, SHRUB + T["mottle"] * C(10, 10, 10) + T["grain"] * C(6, 6, 6))
        _kind(kind, corr, CLEARING)
    hw = segments_near(ls.highways, *box, pad=40.0) if grid.step <= 128 else []
    if hw and grid.step <= 2:
        d = distance(grid.xs, grid.ys, hw, relative=True)
        _put(img, land & wild & (d < 2.4), VERGE + T["mottle"] * C(8, 8, 8))
        road = ~z.core & (d < 1.0)  # bridges over rivers and lakes too
        _put(img, road, ASPHALT + T["grain"] * C(3, 3, 3))
        _kind(kind, road, PAVED)
    elif hw:  # map zooms: one-pixel lines
        road = distance(grid.xs, grid.ys, hw) < 0.6 * grid.step
        _put(img, road, ASPHALT)
        _kind(kind, road, PAVED)

    if towns:
        paint_town(ls, grid, z, img, kind, T)
    return img, kind, z


def tone(ls: Landscape, grid: Grid, img: np.ndarray) -> np.ndarray:
    """One acquisition's look: brightness and colour balance drift slowly across the mosaic."""
    gain = 1.0 + 0.17 * ls.fbm(grid, 9000, "gain", 2)
    warm = ls.fbm(grid, 18000, "warm", 2)
    haze = np.clip(ls.fbm(grid, 11000, "haze", 2), 0, 2.5)  # a thin bluish veil over some acquisitions
    return img * gain + warm * C(5, 1, -5) + haze * C(9, 10, 12)


def _paint_farm(ls: Landscape, grid: Grid, z: Zones, T: dict, img: np.ndarray, kind: np.ndarray) -> None:
    X = grid.xs[None, :]
    Y = grid.ys[:, None]
    # cadastral domains of ~10 km, each with its own strip orientation (roughly perpendicular to the river);
    # geometry in float32 coordinates local to the domain
    dcell = 3200.0
    wx = X + 300 * ls.fbm(grid, 4000, "farm-wx", 2)
    wy = Y + 300 * ls.fbm(grid, 4000, "farm-wy", 2)
    dx, dy = np.floor(wx / dcell), np.floor(wy / dcell)
    lx, ly = (X - dx * dcell).astype(np.float32), (Y - dy * dcell).astype(np.float32)
    dom = hash2(dx, dy, ls.key("farm-domain"))
    theta = -0.62 + (_u(dom) - 0.5) * 0.7
    ct, st = np.cos(theta), np.sin(theta)
    u = lx * ct + ly * st
    v = -lx * st + ly * ct + 2000.0
    dom_id = (dom & np.uint64(0xFFFF)).astype(np.float32)
    rang_len = 520.0 + 200.0 * _u(dom, 16)
    rr = np.floor(v / rang_len)
    rh = hash2(rr, dom_id, ls.key("rang"))
    sw = 22.0 + 55.0 * _u(rh) ** 1.3  # strip width: 70-250 m
    us = u + 1000 * _u(rh, 16)
    s = np.floor(us / sw)
    av = v - rr * rang_len  # along the strip from the rang road
    part = np.floor(av / (rang_len / (1 + np.floor(3 * _u(rh, 32)))))  # strips cut in 1-3 fields
    ph = hash2(s + part * 7919, rr + dom_id * 7, ls.key("parcel"))
    pick = np.minimum(np.searchsorted(_CROP_CDF, _u(ph), side="right"), len(CROPS) - 1)
    col = np.take(_CROP_COLS, pick, axis=1) + (_u(ph, 16) - 0.5) * C(22, 22, 18)
    au = us - s * sw  # across the strip
    dry = (pick >= 3) & (pick != 5)
    soil = ls.fbm(grid, 70, "soil", 3) + 0.4 * T["mottle"]
    col = col + np.where(dry, 14.0, 6.0) * soil * C(1, 0.9, 0.8)
    col = col + np.sin(au * (1.2 + 1.5 * _u(ph, 32))) * C(4, 4, 4) + T["grain"] * C(3, 3, 3)
    woodlot = (_u(ph, 48) < 0.08) | ls.woods(grid, z, 0.3 * T["deciduous"])[0]
    field = z.farm & ~woodlot
    edge = (au < 1.2) | (au > sw - 0.4)
    hedge = edge & (_u(hash2(s, rr, ls.key("hedge"))) < 0.4) & (T["deciduous"] > -0.6)
    col = np.where(edge, col * 0.88, col)
    _put(img, field, col)
    _put(img, field & hedge, TREE + T["deciduous"] * C(14, 14, 14))
    _kind(kind, field, FIELD)
    # rang roads lined with farmsteads
    road = z.farm & (av < 2.6)
    stead = z.farm & (_u(ph, 32) < 0.28) & (part == 0)
    mid = sw / 2
    house = stead & (av > 5) & (av < 9) & (np.abs(au - mid + 3) < 1.8)
    barn = stead & (av > 11) & (av < 19) & (np.abs(au - mid - 1) < 3.0 + 1.5 * _u(ph, 40))
    yard = stead & (av < 24) & (np.abs(au - mid) < 9) & ~house & ~barn
    trees = yard & (T["deciduous"] > 0.5)
    _put(img, yard & ~trees, LAWNS[1] + T["mottle"] * C(6, 6, 6))
    _put(img, trees, TREE + T["deciduous"] * C(12, 12, 12))
    _put(img, house, _pal(_ROOF_COLS, _u(ph, 20)))
    _put(img, barn, _pal(_BIG_COLS, _u(ph, 24)) * (0.9 + 0.1 * (au > mid - 1)))
    _put(img, road, GRAVEL + T["grain"] * C(6, 6, 6))
    _kind(kind, house | barn, ROOF)
    _kind(kind, road, PAVED)


@dataclass(frozen=True)
class Stamps:
    """Periodic patches of residential blocks (streets, lots, houses, drives, pools) in block coordinates.

    Painting a suburb is then a gather from a stamp at rotated local coordinates: a few array operations
    per pixel instead of dozens. Each stamp spans several blocks, so repeats are ~0.5 km apart and hidden
    under per-pixel trees and lawn tints.
    """

    rgb: np.ndarray  # (3, N) all stamps flattened
    kind: np.ndarray  # (N,)
    offset: np.ndarray  # (S,) start of each stamp in the flat arrays
    pu: np.ndarray  # (S,) period across blocks (u)
    pv: np.ndarray  # (S,) period along blocks (v)
    dense: np.ndarray  # (S,) bool: rows of plexes (cores) rather than detached houses


SUBURB_STYLES, DENSE_STYLES = 10, 4


@lru_cache(maxsize=4)
def stamps(seed: int) -> Stamps:
    rng = np.random.default_rng(key_of(seed, "stamps") % 2**63)
    rgbs, kinds, offs, pus, pvs, dens = [], [], [], [], [], []
    off = 0
    for sidx in range(SUBURB_STYLES + DENSE_STYLES):
        dense = sidx >= SUBURB_STYLES
        depth = int(rng.integers(30, 44))
        length = int(rng.integers(70, 120) if dense else rng.integers(80, 170))
        lot_w = float(rng.uniform(3.2, 4.7) if dense else rng.uniform(6.0, 9.0))
        nu, nv = 3, 2
        pu_, pv_ = depth * nu, length * nv
        a = np.arange(pu_, dtype=np.float32)[None, :] % depth
        bu = np.arange(pu_)[None, :] // depth
        b = np.arange(pv_, dtype=np.float32)[:, None] % length
        bv = np.arange(pv_)[:, None] // length
        img = np.zeros((3, pv_, pu_), np.float32)
        kind = np.full((pv_, pu_), LAWN, np.uint8)
        street = (a < 3.0) | (b < 3.0)
        lot = np.floor((b - 3.0) / lot_w)
        lb = (b - 3.0) - lot * lot_w
        back = a > depth / 2
        nlots = int(length / lot_w) + 2
        r = rng.random((nu, nv, 2, nlots, 6)).astype(np.float32)  # per lot: depth, present, roof, pool, -, -
        li = np.clip(lot.astype(int), 0, nlots - 1)
        lr = r[bu, bv, back.astype(int), li]  # (pv, pu, 6)
        hd = np.where(dense, 7.0 + 2.0 * lr[..., 0], 4.0 + 1.8 * lr[..., 0])
        front = np.where(back, depth - 1.6 - hd, 4.6)
        gap = 0.0 if dense else 1.0
        house = (a >= front) & (a < front + hd) & (lb >= gap) & (lb < lot_w - gap) & ((lr[..., 1] < 0.92) | dense)
        ridge = (lb - gap) < (lot_w - 2 * gap) / 2
        roof = np.take(
            _ROOF_COLS, np.minimum((lr[..., 2] * _ROOF_COLS.shape[1]).astype(int), _ROOF_COLS.shape[1] - 1), axis=1
        )
        roof = roof * np.where(ridge | dense, 1.0, 0.8)
        mid = np.abs(a - depth / 2)
        drive = ~house & (not dense) & (lb > lot_w - 2.2) & np.where(back, a > front, a < front + 1.0)
        pool = ~house & (not dense) & (lr[..., 3] < 0.08) & (mid < 3.4) & (mid > 1.0) & (lb > 1.4) & (lb < 4.2)
        alley = dense & (mid < 1.0)
        img[:] = -1.0  # lawn: coloured per neighbourhood at paint time (-2: lawn in a house's shadow)
        shadow = np.roll(np.roll(house, 1, 0), 1, 1) & ~house
        img = np.where(shadow, -2.0, img)
        for m, col, k in (
            (alley, ASPHALT * 0.9, PAVED),
            (drive, C(150, 148, 142), PAVED),
            (pool, POOLBLUE, ROOF),
            (house, roof, ROOF),
            (street, ASPHALT * 1.05, PAVED),
        ):
            img = np.where(m, col, img)
            kind = np.where(m, k, kind).astype(np.uint8)
        rgbs.append(img.reshape(3, -1))
        kinds.append(kind.reshape(-1))
        offs.append(off)
        pus.append(pu_)
        pvs.append(pv_)
        dens.append(dense)
        off += pu_ * pv_
    return Stamps(
        np.concatenate(rgbs, axis=1),
        np.concatenate(kinds),
        np.array(offs),
        np.array(pus),
        np.array(pvs),
        np.array(dens),
    )


def paint_town(ls: Landscape, grid: Grid, z: Zones, img: np.ndarray, kind: np.ndarray, T: dict | None = None) -> None:
    """Suburbs and town cores (on pixels not already water or road): streets, lots, houses, big buildings."""
    if T is None:
        T = _textures(ls, grid)
    free = (kind != WATER) & (kind != PAVED)
    town = (z.core | z.suburb) & free
    if not town.any():
        return
    X = grid.xs[None, :]
    Y = grid.ys[:, None]
    # neighbourhoods: cells of ~1.4 km with their own street orientation and style, bounded by arterial
    # roads; geometry is computed in float32 coordinates local to each cell (world coordinates need float64)
    cell = 430.0
    wx = X + 45 * ls.fbm(grid, 600, "town-wx", 2)
    wy = Y + 45 * ls.fbm(grid, 600, "town-wy", 2)
    cx, cy = np.floor(wx / cell), np.floor(wy / cell)
    fx, fy = (wx - cx * cell).astype(np.float32), (wy - cy * cell).astype(np.float32)
    hood = hash2(cx, cy, ls.key("hood"))
    core = z.core
    theta = (_u(hood) - 0.5) * 1.4
    curvy = (_u(hood, 16) < 0.45) & ~core
    ct, st = np.cos(theta), np.sin(theta)
    u = fx * ct + fy * st + np.where(curvy, 28 * ls.fbm(grid, 190, "curvy", 2), 0) + 500
    v = -fx * st + fy * ct + 500
    arterial = np.minimum(np.minimum(fx, cell - fx), np.minimum(fy, cell - fy)) < 3.6
    park = ls.woods(grid, z, 0.3 * T["deciduous"])[1]
    leafy = 0.1 + 0.8 * _u(hood, 24) ** 0.8

    st_ = stamps(ls.seed)
    hv = _u(hood, 32)
    style = np.where(
        core,
        SUBURB_STYLES + np.minimum((hv * DENSE_STYLES).astype(np.intp), DENSE_STYLES - 1),
        np.minimum((hv * SUBURB_STYLES).astype(np.intp), SUBURB_STYLES - 1),
    )
    pu, pv = st_.pu[style], st_.pv[style]
    iu = np.floor(u).astype(np.intp) % pu
    iv = np.floor(v).astype(np.intp) % pv
    idx = st_.offset[style] + iv * pu + iu
    simg = np.take(st_.rgb, idx, axis=1)
    skind = np.take(st_.kind, idx)
    lawn_px = skind == LAWN
    lawn = _pal(_LAWN_COLS, _u(hood, 40)) + T["mottle"] * C(8, 8, 7)
    shade = np.where(simg[0] < -1.5, np.float32(0.55), np.float32(1.0))
    _put(simg, lawn_px, lawn * shade)
    trees = lawn_px & (T["deciduous"] + 0.5 * T["blob"] > 1.9 - 2.6 * leafy)
    overhang = (skind == PAVED) & (T["deciduous"] + 0.5 * T["blob"] > 2.4 - 2.0 * leafy) & ~core
    _put(simg, trees | overhang, TREE + T["deciduous"] * C(13, 13, 13) + C(6, 10, 4) * _u(hood, 12))
    simg += T["grain"] * C(3, 3, 3)

    # a share of core blocks are commercial: big buildings in their parking lots
    depth, length = 60.0, 90.0
    bu, bv = np.floor(u / depth), np.floor(v / length)
    block = hash2(bu + (hood & np.uint64(0xFFFFF)).astype(np.float32) * 16, bv, ls.key("block"))
    commercial = core & (_u(block) < 0.45)
    res = town & ~park & ~commercial
    _put(img, res, simg)
    _kind(kind, res, LAWN)
    _kind(kind, res & ~lawn_px, ROOF)
    cor = town & ~park & commercial
    if cor.any():
        a, b = u - bu * depth, v - bv * length
        inner = (a > 5) & (a < depth - 2) & (b > 5) & (b < length - 2)
        cimg = np.where(inner, PARKING + T["grain"] * C(4, 4, 4), C(120, 120, 116) + T["grain"] * C(3, 3, 3))
        rows = (np.sin(a * 1.6) > 0.1) & (T["grain"] > 0.4)
        _put(cimg, inner & rows, CAR * (0.75 + 0.2 * T["blob"]))
        kb = _u(block, 8)
        bx = (
            inner
            & (kb < 0.85)
            & (a > 7)
            & (a < 7 + (depth - 11) * (0.5 + 0.5 * _u(block, 40)))
            & (b > 8)
            & (b < 8 + (length - 12) * (0.35 + 0.6 * _u(block, 24)))
        )
        _put(cimg, bx, _pal(_BIG_COLS, _u(block, 16)) + T["mottle"] * C(3, 3, 3))
        green = inner & (kb >= 0.93)
        _put(cimg, green, lawn)
        _put(cimg, green & (T["deciduous"] > 0.3), TREE + T["deciduous"] * C(12, 12, 12))
        _put(cimg, (a < 3.0) | (b < 3.0), ASPHALT * 1.05 + T["grain"] * C(3, 3, 3))
        _put(img, cor, cimg)
        _kind(kind, cor, ROOF)
    art = town & ~park & arterial
    _put(img, art, ASPHALT * 0.92 + T["grain"] * C(3, 3, 3))
    _kind(kind, art, PAVED)


def _textures(ls: Landscape, grid: Grid) -> dict[str, np.ndarray]:
    if grid.step <= 4.0:
        return {k: tex_window(v, grid) for k, v in textures(ls.seed).items()}
    zero = np.zeros(grid.shape, np.float32)  # far zooms: textures average out
    return dict.fromkeys(("conifer", "deciduous", "grain", "mottle", "blob"), zero)
