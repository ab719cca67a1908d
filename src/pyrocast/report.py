"""What a command did, in one shape: a rich table for people and a dict for `--json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


@dataclass
class Report:
    """A titled list of facts (key, value), plus free-form details for JSON."""

    title: str
    facts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> Report:
        self.facts[key] = value
        return self

    def render(self, console: Console) -> None:
        table = Table(title=self.title, show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        for k, v in self.facts.items():
            table.add_row(k, str(v))
        console.print(table)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, **self.facts, **self.details}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)


def uncut_table(title: str, columns: tuple[str, ...], rows: list[tuple[list[str], str]], left: int = 1) -> Table:
    """A table of `rows` ((cells, style)) that cuts nothing at 80 columns: no cell ends in an ellipsis
    ("champion-fa…", "afterno…") and no column is left out. The first `left` columns are left-aligned text that
    may wrap between words when the rest would not fit (Rich drops whole columns otherwise: a stopped load run's
    "(not reached)" stages lost the errors column); the others are as wide as their widest cell."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    every = [[col, *(cells[i] for cells, _ in rows)] for i, col in enumerate(columns)]
    widths = [max(len(c) for c in cells) for cells in every]
    fits = sum(widths) + 2 * (len(widths) - 1) <= 80  # two spaces between columns, none at the edges
    for i, (col, cells) in enumerate(zip(columns, every, strict=True)):
        if i < left and not fits:
            word = max(len(w) for c in cells for w in (c.split() or [""]))
            t.add_column(col, justify="left", min_width=word, overflow="fold")
        else:
            t.add_column(col, justify="left" if i < left else "right", no_wrap=True, min_width=widths[i])
    for cells, style in rows:
        t.add_row(*cells, style=style or None)
    return t
