"""Options in the kernels: an option of Delta env steps takes Delta of SimPy time, and the price its
owner collects at the next sale is discounted by gamma^Delta (methods.md, semi-MDP)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from agents.fixed import TableBidder
from ledger.store import MemoryLedger
from ledger.utilities import utilities
from market.audit import audit
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import Outcome, Task

DURATIONS = (1.0, 3.0)
"""`step` takes 1 env step, `option` 3 (a multi-step option)."""


class Corridor(Task):
    """States 0..4 from 0; `step` moves one cell in 1 time unit, `option` two cells in 3;
    reaching 4 pays 1 and ends the episode."""

    name = "corridor"
    n_states = 5
    primitive_names = ("step", "option")
    horizon = 6

    def step(self, state: int, primitive: int) -> Outcome:
        nxt = min(state + 1 + primitive, 4)
        done = nxt == 4
        return Outcome(nxt, 1.0 if done else 0.0, done, DURATIONS[primitive])


def _run(kernel: str, concurrency: int, gamma: float = 0.9) -> MemoryLedger:
    task = Corridor()
    society = Society.of(task)
    # the 3-step option wins the first auction, then the 1-step move: 0 -> 2 -> 3 -> 4
    bids = np.array([[0.2, 0.2, 0.6, 0.6]] + [[0.5, 0.5, 0.3, 0.3]] * 4)
    assert society.primitive_of == (0, 0, 1, 1)
    policy = TableBidder(bids)
    config = RunConfig(task="chain", gamma=gamma, episodes=6, concurrency=concurrency)
    ledger = MemoryLedger()
    simulate(config, ledger, policy, kernel=kernel, task=task)  # type: ignore[arg-type]
    return ledger


def test_q_star_discounts_the_next_value_by_gamma_to_the_duration() -> None:
    """Q*(s, option) = r + gamma^3 V*(s + 2): the value after an option is discounted by Delta."""
    q = Corridor().q_star(0.9)
    v = q.max(axis=1)
    assert q[0, 1] == pytest.approx(0.9**3 * v[2])
    assert q[0, 0] == pytest.approx(0.9 * v[1])
    assert q[3, 0] == q[2, 1] == 1.0


@pytest.mark.parametrize(("kernel", "concurrency"), [("episodes", 1), ("rounds", 4)])
def test_an_option_advances_simpy_time_by_its_duration(kernel: str, concurrency: int) -> None:
    """The next auction of an episode is held Delta after the transformation that took Delta."""
    ledger = _run(kernel, concurrency)
    events = list(ledger.events())
    transforms = [e for e in events if e.kind == "transform"]
    assert {e.duration for e in transforms} == set(DURATIONS)  # the option did run
    when = {(e.episode, e.step): e.time for e in transforms}
    for e in transforms:
        if (e.episode, e.step + 1) in when:
            assert when[(e.episode, e.step + 1)] == e.time + e.duration
    assert audit(ledger).ok


@pytest.mark.parametrize(("kernel", "concurrency"), [("episodes", 1), ("rounds", 4)])
def test_the_next_price_is_discounted_by_gamma_to_the_duration(
    kernel: str, concurrency: int
) -> None:
    """A winner's utility is r - price paid + gamma^Delta * what the next winner pays it."""
    gamma = Fraction(9, 10)
    ledger = _run(kernel, concurrency, gamma=float(gamma))
    stored = utilities(ledger.events(), gamma)
    events = list(ledger.events())
    paid_by = {(e.episode, e.step): e for e in events if e.kind == "pay"}
    rewards = {(e.episode, e.step): e for e in events if e.kind == "reward"}
    checked = 0
    for e in (e for e in events if e.kind == "transform"):
        key, nxt = (e.episode, e.step), (e.episode, e.step + 1)
        received = paid_by[nxt].amount if nxt in paid_by else 0
        want = rewards[key].amount - paid_by[key].amount + gamma ** int(e.duration) * received
        assert stored[(*key, e.account)] == want
        checked += e.duration > 1 and received > 0
    assert checked > 0  # some option's owner sold its state on


def test_both_kernels_run_the_same_episodes_with_options() -> None:
    """Per episode, the round kernel writes the events and times the episode kernel writes."""

    def by_episode(ledger: MemoryLedger) -> dict[int, list[tuple[object, ...]]]:
        out: dict[int, list[tuple[object, ...]]] = {}
        for e in ledger.events():
            if e.episode >= 0:
                own = e.model_dump(exclude={"seq", "tx"})
                out.setdefault(e.episode, []).append(tuple(sorted(own.items())))
        return out

    assert by_episode(_run("rounds", 4)) == by_episode(_run("episodes", 4))
