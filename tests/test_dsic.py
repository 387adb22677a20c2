"""Truthfulness of one second-price auction, and its failure under first price.

Our bidder (id 0, so it wins ties) has valuation `value` for the item; its utility is
value - price when it wins and 0 otherwise. Rivals bid from a fixed discrete distribution, so
every expectation is an exact sum over all rival profiles.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from ledger.units import UNIT
from market.mechanisms import Mechanism, settle

C = UNIT // 100
"""One hundredth of a credit, in units."""
RIVAL_BIDS = [0, 10 * C, 25 * C, 40 * C, 55 * C, 70 * C, 90 * C]
"""Each rival bids one of these, uniformly and independently."""
PROFILES = list(itertools.product(RIVAL_BIDS, repeat=3))
"""Every profile of three rivals' bids: the support of the rivals' joint distribution."""
ALTERNATIVES = list(range(0, UNIT + 1, 5 * C))
"""Bids our bidder may try instead of its valuation: a grid over [0, 1] credit."""
VALUES = [33 * C, 55 * C, 62 * C, 80 * C]


def utility(mechanism: Mechanism, value: int, bid: int, rivals: Sequence[int]) -> int:
    """Our bidder's utility in one auction, settled by the engine."""
    s = settle(mechanism, [bid, *rivals], first_sale=True)
    return value - (s.price or 0) if s.winner == 0 else 0


def expected_utility(
    mechanism: Mechanism, value: int, bid: int, profiles: Sequence[Sequence[int]]
) -> int:
    """The sum of utilities over equally likely profiles (the expectation times their count)."""
    return sum(utility(mechanism, value, bid, r) for r in profiles)


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("mechanism", [Mechanism.V, Mechanism.CCV])
def test_second_price_expected_utility_is_maximised_by_the_valuation(
    mechanism: Mechanism, value: int
) -> None:
    """Second price: no bid on the grid beats bidding the valuation in expectation."""
    truthful = expected_utility(mechanism, value, value, PROFILES)
    best = max(expected_utility(mechanism, value, b, PROFILES) for b in ALTERNATIVES)
    assert truthful >= best
    assert truthful > 0  # the valuation beats some rival bids: winning is worth something


@pytest.mark.parametrize("mechanism", [Mechanism.V, Mechanism.CCV])
def test_second_price_truthful_bid_is_dominant_profile_by_profile(mechanism: Mechanism) -> None:
    """Second price: against every rival profile, bidding the valuation is a best response."""
    for value, rivals in itertools.product(VALUES, PROFILES):
        truthful = utility(mechanism, value, value, rivals)
        assert all(truthful >= utility(mechanism, value, b, rivals) for b in ALTERNATIVES)


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("mechanism", [Mechanism.FP, Mechanism.BB])
def test_first_price_rewards_shading(mechanism: Mechanism, value: int) -> None:
    """First price: truthful bidding earns 0, and some lower bid earns strictly more."""
    truthful = expected_utility(mechanism, value, value, PROFILES)
    scores = {b: expected_utility(mechanism, value, b, PROFILES) for b in ALTERNATIVES}
    best = max(scores, key=lambda b: scores[b])
    assert truthful == 0
    assert scores[best] > truthful
    assert best < value


def test_second_price_is_truthful_against_a_sampled_rival_field() -> None:
    """Second price: over a fixed seeded sample of five Beta(2, 3) rivals, truth is optimal."""
    rng = np.random.default_rng(20200705)
    profiles = (np.rint(rng.beta(2.0, 3.0, size=(400, 5)) * UNIT)).astype(int).tolist()
    value = 60 * C
    truthful = expected_utility(Mechanism.V, value, value, profiles)
    fp_truthful = expected_utility(Mechanism.FP, value, value, profiles)
    for b in ALTERNATIVES:
        assert truthful >= expected_utility(Mechanism.V, value, b, profiles)
    assert max(expected_utility(Mechanism.FP, value, b, profiles) for b in ALTERNATIVES) > (
        fp_truthful
    )
