"""validator.jsonline writes exactly what json.dumps writes, for every value a verdict can hold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from validator.jsonline import dumps

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)),
                      max_leaves=20)


@given(VALUES)
def test_same_text_as_json_dumps(value: object) -> None:
    assert dumps(value) == json.dumps(value)


@pytest.mark.parametrize("value", ["tab\there", 'quote " and \\', "\x00\x1f\x7f", "é€😀", "\ud800"])
def test_strings(value: str) -> None:
    assert dumps(value) == json.dumps(value) and json.loads(dumps(value)) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object()])
def test_refuses_what_is_not_json(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        dumps(value)
