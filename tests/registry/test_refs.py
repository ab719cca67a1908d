"""What may name a model version: checked before MLflow sees it."""

from __future__ import annotations

import pytest

from pyrocast.errors import InvalidInputError
from pyrocast.registry.refs import check_model_ref


@pytest.mark.parametrize("ref", ["3", "v3", "V12", "latest", "champion", "challenger", "my_alias-2", " 7 "])
def test_versions_and_aliases_pass(ref: str) -> None:
    assert check_model_ref(ref) == ref.strip()


@pytest.mark.parametrize("ref", ["", "a/b", "1;2", "1.5", "9" * 40, "x" * 65, "-a", "cham pion", "zoë"])
def test_anything_else_is_the_clients_mistake(ref: str) -> None:
    with pytest.raises(InvalidInputError, match="is not a model version or alias"):
        check_model_ref(ref)
