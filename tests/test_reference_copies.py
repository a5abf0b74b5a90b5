"""The committed copies of the shared reference figures are the originals, byte for byte."""

from __future__ import annotations

import pytest

from tests.fixtures.reference import HERE, NAMES, SHARED


@pytest.mark.parametrize("name", NAMES)
def test_committed_reference_equals_the_shared_original(name: str) -> None:
    if SHARED is None or not (SHARED / name).is_file():
        pytest.skip("shared/reference/ is not beside this checkout")
    assert (HERE / name).read_bytes() == (SHARED / name).read_bytes()
