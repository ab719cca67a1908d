"""What a command did, in one shape: a rich table for people and a dict for `--json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
