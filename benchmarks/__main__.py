"""Run every benchmark module and print what it measured (ratios are measured within one run)."""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
import time

from rich.console import Console
from rich.table import Table

import benchmarks


def _warnings_only() -> None:
    """Warnings and errors on stderr, nothing below, whatever a library does to the root logger later.

    ONNX Runtime's quantizer logs through the root logger, which makes Python add a handler on its own; with
    the root level moved later (ZenML), bench_training then printed some 2,000 DEBUG lines of ZenML's pipeline
    compilation. A handler of our own that drops everything under WARNING keeps the output to the table.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=[handler], force=True
    )


def main(argv: list[str]) -> int:
    os.environ.setdefault("PYROCAST_QUIET", "1")
    _warnings_only()
    only = set(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets whole measure names
    table = Table(title="Pyrocast benchmarks (one run; machines are shared and noisy)")
    for col in ("benchmark", "measure", "value", "unit"):
        table.add_column(col)
    failed = 0
    for mod in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")):
        if only and mod.removeprefix("bench_") not in only:
            continue
        console.print(f"[bold]running {mod}...[/bold]")
        t0 = time.perf_counter()
        try:
            results = importlib.import_module(f"benchmarks.{mod}").run()
        except Exception as exc:  # a broken benchmark must not hide the others
            failed += 1
            console.print(f"[red]{mod} failed:[/red] {exc}")
            continue
        for name, value, unit in results:
            table.add_row(
                mod.removeprefix("bench_"), name, f"{value:.4g}" if isinstance(value, float) else str(value), unit
            )
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    console.print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
