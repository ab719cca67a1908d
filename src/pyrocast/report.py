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
    """A table of `rows` ((cells, style)) whose columns are each as wide as their widest cell: nothing is cut with
    an ellipsis at 80 columns ("champion-fa…", "afterno…"); the first `left` columns are left-aligned."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, col in enumerate(columns):
        wide = max([len(col), *(len(cells[i]) for cells, _ in rows)])
        t.add_column(col, justify="left" if i < left else "right", no_wrap=True, min_width=wide)
    for cells, style in rows:
        t.add_row(*cells, style=style or None)
    return t
