"""Contracts of the unit rules: the scalar and array forms give the same ints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.units import UNIT, quantise_bid_array, quantise_bids, to_units, to_units_array

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
bid = st.one_of(finite, st.sampled_from([0.0, -0.0, 1.0, 0.5e-9, 1.5e-9, 2.5e-9, math.inf]))


@given(st.lists(bid, max_size=8))
def test_a_row_of_bids_quantises_alike_in_either_form(bids: list[float]) -> None:
    """The episode kernel's list form and the array kernels' form agree bid for bid."""
    assert quantise_bids(bids) == quantise_bid_array(np.array(bids, dtype=np.float64)).tolist()


@given(st.lists(bid, max_size=8))
def test_a_bid_is_clipped_to_one_credit_and_rounded_to_the_nearest_unit(bids: list[float]) -> None:
    for b, units in zip(bids, quantise_bids(bids), strict=True):
        assert 0 <= units <= UNIT
        if 0.0 < b < 1.0:
            assert abs(units - b * UNIT) <= 0.5


def test_ties_go_to_the_even_unit() -> None:
    assert quantise_bids([0.5e-9, 1.5e-9, 2.5e-9]) == [0, 2, 2]
    assert to_units(2.5e-9) == 2 and to_units(-0.5e-9) == 0


def test_a_nan_bid_is_refused_in_either_form() -> None:
    """A NaN has no place in [0, 1]: both forms refuse it with the same reason (cast to
    int64 unchecked, it would be -2**63 units)."""
    with pytest.raises(ValueError, match="not a number"):
        quantise_bids([0.5, math.nan])
    with pytest.raises(ValueError, match="not a number"):
        quantise_bid_array(np.array([[0.5, math.nan]]))


@given(st.lists(finite, max_size=8))
def test_rewards_quantise_alike_in_either_form(rewards: list[float]) -> None:
    assert [to_units(r) for r in rewards] == to_units_array(rewards).tolist()
