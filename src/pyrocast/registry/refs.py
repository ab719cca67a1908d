"""What may name a registered model version: a number (`3`, `v3`), `latest`, or an alias (`champion`).

Checked before anything reaches MLflow, whose errors for a malformed name are server errors: a request that
names no possible version is the client's mistake (a 4xx), not the registry's (a 5xx).
"""

from __future__ import annotations

import re

from pyrocast.errors import InvalidInputError

# MLflow aliases: letters, digits, '_' and '-', at most 255 characters; 64 is plenty here.
MODEL_REF = re.compile(r"[vV]?[0-9]{1,9}|[A-Za-z_][A-Za-z0-9_-]{0,63}")


def check_model_ref(ref: str) -> str:
    """`ref` stripped, or InvalidInputError saying what a version reference looks like."""
    text = str(ref).strip()
    if not MODEL_REF.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInputError(
            f"{shown!r} is not a model version or alias",
            "give a version number (e.g. 3), `latest`, or an alias such as champion or challenger",
        )
    return text
