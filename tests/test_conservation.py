"""Credit conservation (methods.md, Part 1) as properties of random scripted runs.

A scripted task replays hand-drawn rewards, durations and episode ends, and a scripted policy
replays drawn bids, so every expected figure is computed here from the draw alone. With
gamma = 99/100 as a Fraction every identity holds exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from ledger.events import AUCTIONEER, ENVIRONMENT, EpisodeEnd, Mint
from ledger.replay import replay
from ledger.store import MemoryLedger
from ledger.units import UNIT
from ledger.utilities import utilities
from market.audit import AuditReport, audit
from market.mechanisms import Mechanism
from market.run import RunConfig, simulate
from market.tasks import Outcome, Task

pytestmark = pytest.mark.usefixtures("small_chunks")

GAMMA = Fraction(99, 100)
EXAMPLES = settings(max_examples=50, deadline=None, database=None)


@dataclass(frozen=True)
class Step:
    """One drawn auction: every bidder's bid (units), the reward (units) and its duration."""

    bids: tuple[int, ...]
    reward: int
    duration: int
    done: bool

    @property
    def b1(self) -> int:
        return max(self.bids)

    @property
    def b2(self) -> int:
        return sorted(self.bids)[-2] if len(self.bids) > 1 else 0


@dataclass(frozen=True)
class Draw:
    """A drawn run: its society, mechanism and the steps of each episode."""

    primitives: int
    cloned: bool
    mechanism: Mechanism
    horizon: int
    episodes: tuple[tuple[Step, ...], ...]

    @property
    def bidders(self) -> int:
        return self.primitives * (2 if self.cloned else 1)

    def steps(self) -> Iterator[Step]:
        return (s for ep in self.episodes for s in ep)


BID = st.one_of(st.integers(0, UNIT), st.sampled_from([0, UNIT // 4, UNIT // 2, UNIT]))
"""A bid in units; the small set makes ties (and equal b1, b2) frequent."""


@st.composite
def draws(draw: st.DrawFn, mechanisms: list[Mechanism] | None = None) -> Draw:
    primitives = draw(st.integers(1, 3))
    cloned = draw(st.booleans())
    mechanism = draw(st.sampled_from(mechanisms or list(Mechanism)))
    horizon = draw(st.integers(1, 6))
    n = primitives * (2 if cloned else 1)
    episodes = []
    for _ in range(draw(st.integers(1, 4))):
        length = draw(st.integers(1, horizon))
        ends = length < horizon or draw(st.booleans())  # at the horizon: a time-out or a goal
        episode = tuple(
            Step(
                bids=tuple(draw(st.lists(BID, min_size=n, max_size=n))),
                reward=draw(st.integers(-UNIT, UNIT)),
                duration=draw(st.integers(1, 3)),
                done=ends and t == length - 1,
            )
            for t in range(length)
        )
        episodes.append(episode)
    return Draw(primitives, cloned, mechanism, horizon, tuple(episodes))


class ScriptedPolicy:
    """Answers the drawn bids, one auction per call."""

    def __init__(self, d: Draw) -> None:
        self.steps = d.steps()

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        return np.array([next(self.steps).bids for _ in states], dtype=np.float64) / UNIT


def scripted_task(d: Draw) -> type[Task]:
    """A task that replays the drawn rewards, durations and episode ends in order."""
    steps = d.steps()

    class Scripted(Task):
        name = "scripted"
        n_states = 1
        primitive_names = tuple(f"p{i}" for i in range(d.primitives))
        horizon = d.horizon

        def step(self, state: int, primitive: int) -> Outcome:
            s = next(steps)
            return Outcome(next_state=0, reward=s.reward / UNIT, done=s.done, duration=s.duration)

    return Scripted


def run(d: Draw) -> MemoryLedger:
    """Simulate the draw into a fresh in-memory ledger."""
    ledger = MemoryLedger()
    config = RunConfig(
        task="scripted", mechanism=d.mechanism, cloned=d.cloned, episodes=len(d.episodes)
    )
    simulate(config, ledger, ScriptedPolicy(d), task=scripted_task(d)())
    return ledger


def discounts(episode: tuple[Step, ...]) -> list[Fraction]:
    """Gamma_t: Gamma_0 = 1, Gamma_{t+1} = Gamma_t * gamma^duration_t."""
    out = [Fraction(1)]
    for s in episode[:-1]:
        out.append(out[-1] * GAMMA**s.duration)
    return out


def first_price(d: Draw, s: Step) -> int:
    """What the first winner of an episode pays the environment."""
    return {"ccv": s.b2, "v": s.b2, "bb": s.b1, "fp": s.b1, "env": 0}[d.mechanism.value]


def expected_mint(d: Draw) -> int:
    """Vickrey mints b1 - b2 at every sale after the first of each episode; others mint 0."""
    if d.mechanism is not Mechanism.V:
        return 0
    return sum(s.b1 - s.b2 for ep in d.episodes for s in ep[1:])


@given(draws())
@EXAMPLES
def test_discounted_utilities_sum_to_the_identity(d: Draw) -> None:
    """Sum_t Gamma_t sum_i U_t = Sum_t Gamma_t r_t - price_0 (+ V's discounted b1 - b2)."""
    u = utilities(run(d).events(), GAMMA)
    for ep, episode in enumerate(d.episodes):
        g = discounts(episode)
        got = sum(
            (g[t] * sum(v for (e, step, _), v in u.items() if (e, step) == (ep, t))
             for t in range(len(episode))),
            Fraction(0),
        )  # fmt: skip
        expected = sum((g[t] * s.reward for t, s in enumerate(episode)), Fraction(0))
        expected -= first_price(d, episode[0])
        if d.mechanism is Mechanism.V:
            expected += sum(g[t] * (s.b1 - s.b2) for t, s in enumerate(episode) if t >= 1)
        assert got == expected, f"episode {ep}"


@given(draws())
@EXAMPLES
def test_losers_get_zero_and_every_bidder_has_a_utility(d: Draw) -> None:
    """Every bidder of every auction has a U_t, and all but one per auction get exactly 0."""
    u = utilities(run(d).events(), GAMMA)
    for ep, episode in enumerate(d.episodes):
        for t in range(len(episode)):
            row = [v for (e, step, _), v in u.items() if (e, step) == (ep, t)]
            assert len(row) == d.bidders
            assert sum(1 for v in row if v != 0) <= 1
    assert len(u) == d.bidders * sum(len(ep) for ep in d.episodes)


@given(draws())
@EXAMPLES
def test_only_vickrey_mints_and_exactly_b1_minus_b2(d: Draw) -> None:
    """ccv, bb, fp, env mint nothing; v mints Sum (b1 - b2) over every sale after the first."""
    ledger = run(d)
    minted = sum(e.amount for e in ledger.events() if isinstance(e, Mint))
    assert minted == expected_mint(d)
    assert audit(ledger).minted == expected_mint(d)


@given(draws())
@EXAMPLES
def test_books_balance_and_wealth_moves_by_rewards_less_first_price(d: Draw) -> None:
    """Replayed balances sum to 0; the society gains Sum r - Sum price_0 (+ minted credit)."""
    balances = replay(run(d))
    assert sum(balances.values()) == 0
    rewards = sum(s.reward for s in d.steps())
    paid_in = sum(first_price(d, ep[0]) for ep in d.episodes)
    society = sum(v for a, v in balances.items() if a not in (ENVIRONMENT, AUCTIONEER))
    assert society == rewards - paid_in + expected_mint(d)
    assert balances.get(ENVIRONMENT, 0) == paid_in - rewards
    assert balances.get(AUCTIONEER, 0) == -expected_mint(d)


@given(draws())
@EXAMPLES
def test_every_episode_ends_with_its_length_and_return(d: Draw) -> None:
    """Each episode, ended by its goal or by the horizon, closes with its steps and Sum r_t."""
    ends = [
        (e.episode, e.steps, e.episode_return) for e in run(d).events() if isinstance(e, EpisodeEnd)
    ]
    assert ends == [
        (ep, len(episode), sum(s.reward for s in episode)) for ep, episode in enumerate(d.episodes)
    ]


@given(draws())
@EXAMPLES
def test_audit_is_clean(d: Draw) -> None:
    """Every generated run passes the audit, which counts all its auctions and episodes."""
    report: AuditReport = audit(run(d))
    assert report.violation is None, str(report.violation)
    assert report.auctions == sum(len(ep) for ep in d.episodes)
    assert report.episodes == len(d.episodes)
    assert report.rewards_in == sum(s.reward for s in d.steps())
    assert report.closing_checked == d.bidders + 2
