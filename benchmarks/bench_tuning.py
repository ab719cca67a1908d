"""Tuning + training against the accuracy and time bars (the model core alone, without the pipeline around it).

- quick profile on 400 synthetic tiles (split spatially): tune + train time, held-out test accuracy;
- full profile on the 369 real tiles of ../shared (when present), from a cold data directory (the trunk
  export and trunk outputs included): tune + train time, accuracy on the spatial test split it made;
- the stricter real check: train and tune on the real `train` folder only (split spatially into train and
  valid) and score the real `valid` folder, which holds other places from another source.

Times are wall clock on this machine (shared, noisy) and the process's CPU time; bars: quick tune + train
about 60-90 s, full tune + train at most 12 minutes, full accuracy at least 0.95.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pyrocast.settings import Settings

REAL = Path(os.environ.get("PYROCAST_REAL_TILES", Path(__file__).resolve().parents[2] / "shared/data/wildfire-tiles"))


def _tune_and_train(root: Path, s: Settings, profile_name: str) -> tuple[object, float, float, object]:
    from pyrocast.model.profiles import PROFILES
    from pyrocast.model.train import train_model
    from pyrocast.model.tune import tune

    prof = PROFILES[profile_name]
    w, c = time.perf_counter(), time.process_time()
    res = tune(root, s, prof, seed=42)
    tm = train_model(root, res.best_params, s, prof, seed=42)
    return tm, time.perf_counter() - w, time.process_time() - c, res


def _accuracy(tm: object, root: Path, s: Settings, split: str = "test") -> tuple[float, int]:
    from pyrocast.data.access import evaluation_view
    from pyrocast.model.data import load_split
    from pyrocast.model.train import predict_arrays

    a = load_split(evaluation_view(root), split, tm.spec.size)  # type: ignore[attr-defined]
    p = predict_arrays(tm, a.x, s)  # type: ignore[arg-type]
    return float(((p > 0.5) == a.y).mean()), len(a.y)


def _strict_dataset(s: Settings, work: Path) -> Path:
    """Real `train` folder split spatially into train/valid; the real `valid` folder as the test split."""
    from pyrocast.data.kaggle import import_kaggle
    from pyrocast.data.layout import Dataset
    from pyrocast.data.split import split_dataset

    src_train, src_test = work / "src-train", work / "src-test"
    for src, folder, as_split in ((src_train, "train", "unsplit"), (src_test, "valid", "test")):
        for label in ("wildfire", "nowildfire"):
            (src / as_split / label).mkdir(parents=True, exist_ok=True)
            for f in (REAL / folder / label).glob("*.jpg"):
                (src / as_split / label / f.name).symlink_to(f)
    root = work / "strict"
    ds = Dataset(root)
    import_kaggle(src_train, ds, s)
    strict = s.model_copy(update={"split": s.split.model_copy(update={"train": 0.8, "valid": 0.2, "test": 0.0})})
    split_dataset(ds, strict, fresh=True)
    import_kaggle(src_test, ds, s)
    return root


def run() -> list[tuple[str, float | str, str]]:
    from pyrocast.data.layout import Dataset
    from pyrocast.data.split import split_dataset
    from pyrocast.data.synthetic.dataset import render_into
    from pyrocast.model.data import clear_cache, prepare_dataset

    os.environ.setdefault("PYROCAST_QUIET", "1")
    out: list[tuple[str, float | str, str]] = []
    with tempfile.TemporaryDirectory(prefix="pyrocast-bench-tuning-") as tmp:
        s = Settings(data_dir=Path(tmp) / "syn")
        s.ensure_dirs()
        render_into(Dataset(s.dataset_dir), s, n_tiles=400, seed=42)
        split_dataset(Dataset(s.dataset_dir), s)
        root = prepare_dataset(s, None)
        tm, wall, cpu, res = _tune_and_train(root, s, "quick")
        acc, n = _accuracy(tm, root, s)
        out += [
            ("quick: tune + train, wall", wall, "s"),
            ("quick: tune + train, CPU", cpu, "s"),
            ("quick: trials (pruned)", f"{res.n_trials} ({res.n_pruned})", ""),
            ("quick: network", tm.net.describe(), ""),  # type: ignore[attr-defined]
            (f"quick: synthetic test accuracy (n={n})", acc, ""),
        ]
        if not (REAL / "train").is_dir():
            return [*out, ("full profile", "skipped: real tiles not found", str(REAL))]

        clear_cache()
        s = Settings(data_dir=Path(tmp) / "real")  # cold: no cached trunk, no study
        s.ensure_dirs()
        w = time.perf_counter()
        root = prepare_dataset(s, REAL)
        prep = time.perf_counter() - w
        tm, wall, cpu, res = _tune_and_train(root, s, "full")
        acc, n = _accuracy(tm, root, s)
        out += [
            ("full: import + spatial split", prep, "s"),
            ("full: tune + train (cold), wall", wall, "s"),
            ("full: tune + train (cold), CPU", cpu, "s"),
            ("full: trials (pruned)", f"{res.n_trials} ({res.n_pruned})", ""),
            ("full: network", tm.net.describe(), ""),  # type: ignore[attr-defined]
            ("full: valid accuracy (early-stopped model)", float(tm.valid_metrics["accuracy"]), ""),  # type: ignore[attr-defined]
            (f"full: real spatial test split accuracy (n={n})", acc, ""),
        ]

        s = Settings(data_dir=Path(tmp) / "strict")
        s.ensure_dirs()
        root = _strict_dataset(s, Path(tmp))
        tm, wall, cpu, _ = _tune_and_train(root, s, "full")
        acc, n = _accuracy(tm, root, s)
        out += [
            ("strict: tune + train on the train folder, wall", wall, "s"),
            (f"strict: accuracy on the real valid folder (n={n})", acc, ""),
        ]
    return out


if __name__ == "__main__":
    for row in run():
        print(*row, sep="\t")
