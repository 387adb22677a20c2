"""The mechanism table of methods.md, on hand-made bids and end to end through the kernel."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from numpy.typing import NDArray

from ledger.events import AUCTIONEER, ENVIRONMENT, Allocate, Bid, Mint, Pay, Reward
from ledger.store import MemoryLedger
from ledger.units import UNIT
from ledger.utilities import utilities
from market.audit import audit
from market.mechanisms import Mechanism, parse, settle
from market.run import RunConfig, simulate

GAMMA = Fraction(99, 100)
C = UNIT // 100
"""One hundredth of a credit, in units: hand-made bids are written in hundredths."""


# --- settle, one auction at a time -----------------------------------------------------------


@pytest.mark.parametrize("first_sale", [True, False])
def test_ccv_pays_second_price_and_mints_nothing(first_sale: bool) -> None:
    """ccv: the highest bid wins and pays the second-highest bid; no credit is created."""
    s = settle(Mechanism.CCV, [3, 7, 5], first_sale=first_sale)
    assert (s.winner, s.b1, s.b2, s.price, s.mint) == (1, 7, 5, 5, 0)


def test_v_pays_second_price_and_mints_the_gap_after_the_first_sale() -> None:
    """v: the winner pays b2 and the auctioneer mints b1 - b2 for the seller."""
    s = settle(Mechanism.V, [3, 7, 5], first_sale=False)
    assert (s.winner, s.b1, s.b2, s.price, s.mint) == (1, 7, 5, 5, 7 - 5)


def test_v_mints_nothing_at_the_first_sale() -> None:
    """v: the environment sells the first state, so the first auction of an episode mints 0."""
    s = settle(Mechanism.V, [3, 7, 5], first_sale=True)
    assert (s.price, s.mint) == (5, 0)


@pytest.mark.parametrize("mechanism", [Mechanism.BB, Mechanism.FP])
@pytest.mark.parametrize("first_sale", [True, False])
def test_bb_and_fp_pay_first_price(mechanism: Mechanism, first_sale: bool) -> None:
    """bb and fp: the winner pays its own bid b1; no credit is created."""
    s = settle(mechanism, [3, 7, 5], first_sale=first_sale)
    assert (s.winner, s.b1, s.b2, s.price, s.mint) == (1, 7, 5, 7, 0)


@pytest.mark.parametrize("first_sale", [True, False])
def test_env_has_no_price(first_sale: bool) -> None:
    """env: the winner pays nothing and nothing is minted."""
    s = settle(Mechanism.ENV, [3, 7, 5], first_sale=first_sale)
    assert (s.winner, s.price, s.mint) == (1, None, 0)


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_tie_goes_to_the_lowest_id(mechanism: Mechanism) -> None:
    """A tie for the highest bid is won by the lowest bidder id, and then b2 = b1."""
    s = settle(mechanism, [5, 9, 2, 9, 9], first_sale=False)
    assert (s.winner, s.b1, s.b2) == (1, 9, 9)
    assert s.mint == 0


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_lone_bidder_has_second_price_zero(mechanism: Mechanism) -> None:
    """With a single bidder b2 = 0: it wins, second-price mechanisms charge 0."""
    s = settle(mechanism, [4], first_sale=False)
    expected_price = {"ccv": 0, "v": 0, "bb": 4, "fp": 4, "env": None}[mechanism.value]
    assert (s.winner, s.b1, s.b2, s.price) == (0, 4, 0, expected_price)
    assert s.mint == (4 if mechanism is Mechanism.V else 0)


def test_all_zero_bids_are_won_by_bidder_zero() -> None:
    """All bids 0 is a tie like any other: bidder 0 wins at price 0."""
    s = settle(Mechanism.CCV, [0, 0, 0], first_sale=True)
    assert (s.winner, s.b1, s.b2, s.price) == (0, 0, 0, 0)


def test_unknown_mechanism_names_the_choices() -> None:
    """Parsing an unknown mechanism key raises a ValueError listing every key."""
    with pytest.raises(ValueError, match="ccv, v, bb, fp, env"):
        parse("vcg")
    assert parse("bb") is Mechanism.BB


# --- end to end: a scripted policy through the kernel into a ledger --------------------------


class Script:
    """A policy that answers pre-set bid rows (in hundredths of a credit), one row per call."""

    def __init__(self, rows: Sequence[Sequence[int]]) -> None:
        self.rows = list(rows)
        self.states: list[int] = []

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        self.states.extend(int(s) for s in states)
        return np.array([self.rows.pop(0) for _ in states], dtype=np.float64) / 100


def _sale(row: Sequence[int]) -> tuple[int, int, int]:
    """(winner, b1, b2) by the paper's rule: argmax, lowest id on ties, b2 = 0 alone."""
    b1 = max(row)
    ordered = sorted(row, reverse=True)
    return min(i for i, b in enumerate(row) if b == b1), b1, ordered[1] if len(row) > 1 else 0


def table_utilities(
    mechanism: str, rows: Sequence[Sequence[int]], rewards: Sequence[int], accounts: Sequence[str]
) -> dict[tuple[int, str], Fraction]:
    """U_t for every bidder of one episode, straight from the table in methods.md (units)."""
    sales = [_sale([b * C for b in row]) for row in rows] + [(-1, 0, 0)]  # b1_T = b2_T = 0
    out: dict[tuple[int, str], Fraction] = {}
    for t in range(len(rows)):
        w, b1, b2 = sales[t]
        _, next_b1, next_b2 = sales[t + 1]
        next_price, price = {
            "ccv": (next_b2, b2),
            "v": (next_b1, b2),
            "bb": (next_b1, b1),
            "fp": (next_b1, b1),
            "env": (0, 0),
        }[mechanism]
        for i, account in enumerate(accounts):
            u = rewards[t] + GAMMA * next_price - price if i == w else Fraction(0)
            out[(t, account)] = u
    return out


def table_transfers(
    mechanism: str, rows: Sequence[Sequence[int]], rewards: Sequence[int], accounts: Sequence[str]
) -> list[tuple[str, int, str, str, int]]:
    """The (kind, step, src, dst, amount) transfers the credit-conservation section prescribes."""
    out = []
    seller = ENVIRONMENT
    for t, row in enumerate(rows):
        w, b1, b2 = _sale([b * C for b in row])
        winner = accounts[w]
        price = {"ccv": b2, "v": b2, "bb": b1, "fp": b1, "env": None}[mechanism]
        if price is not None:
            out.append(("pay", t, winner, seller, price))
        if mechanism == "v" and t > 0 and b1 > b2:
            out.append(("mint", t, AUCTIONEER, seller, b1 - b2))
        r = rewards[t]
        out.append(
            ("reward", t, *((ENVIRONMENT, winner) if r >= 0 else (winner, ENVIRONMENT)), abs(r))
        )
        seller = winner
    return out


ChainScript = tuple[list[list[int]], list[int], tuple[str, ...], bool]
"""(bid rows, states auctioned, bidder accounts, cloned) of one scripted Chain episode."""

# Chain, cloned: bidders L.0 L.1 R.0 R.1. Path 0 -R.0(tie)-> 1 -L.0-> 0 -R.1-> 1 -R.0-> 2
# -R.0 (sells to itself)-> 3 -R.1-> 4 -R.0(tie)-> 5 (goal, reward 0.8).
CHAIN_CLONED: ChainScript = (
    [[10, 20, 60, 60], [50, 30, 40, 45], [20, 10, 30, 70], [0, 0, 90, 80],
     [0, 0, 85, 35], [5, 5, 40, 95], [0, 0, 100, 100]],
    [0, 1, 0, 1, 2, 3, 4],
    ("L.0", "L.1", "R.0", "R.1"),
    True,
)  # fmt: skip
# Chain, solitary: bidders L.0 R.0. Path 0 -R-> 1 -L-> 0 -L(tie; stays)-> 0 -R-> 1 -R-> 2 -R-> 3
# -R-> 4 -R-> 5.
CHAIN_SOLITARY: ChainScript = (
    [[30, 70], [60, 20], [10, 10], [0, 50], [25, 80], [40, 60], [10, 90], [0, 100]],
    [0, 1, 0, 0, 1, 2, 3, 4],
    ("L.0", "R.0"),
    False,
)
CHAIN_REWARDS = {7: [0] * 6 + [8 * UNIT // 10], 8: [0] * 7 + [8 * UNIT // 10]}


def _run(
    task: str, mechanism: Mechanism, cloned: bool, rows: list[list[int]], episodes: int = 1
) -> tuple[MemoryLedger, Script]:
    """Simulate `episodes` episodes of `task` bidding `rows` into a fresh ledger."""
    ledger = MemoryLedger()
    policy = Script(rows)
    config = RunConfig(task=task, mechanism=mechanism, cloned=cloned, episodes=episodes)
    simulate(config, ledger, policy)
    assert not policy.rows, "the run did not consume its whole script"
    return ledger, policy


def _transfers(ledger: MemoryLedger) -> list[tuple[str, int, str, str, int]]:
    return [
        (e.kind, e.step, e.src, e.dst, e.amount)
        for e in ledger.events()
        if isinstance(e, Pay | Mint | Reward) and not (isinstance(e, Mint) and e.amount == 0)
    ]


@pytest.mark.parametrize("mechanism", list(Mechanism))
@pytest.mark.parametrize("society", [CHAIN_CLONED, CHAIN_SOLITARY], ids=["cloned", "solitary"])
def test_chain_utilities_follow_the_table(mechanism: Mechanism, society: ChainScript) -> None:
    """On Chain, every bidder's U_t from the ledger equals the methods.md table (losers 0)."""
    rows, _, accounts, cloned = society
    ledger, _ = _run("chain", mechanism, cloned, rows)
    expected = table_utilities(mechanism.value, rows, CHAIN_REWARDS[len(rows)], accounts)
    got = utilities(ledger.events(), GAMMA)
    assert got == {(0, t, a): u for (t, a), u in expected.items()}


@pytest.mark.parametrize("mechanism", list(Mechanism))
@pytest.mark.parametrize("society", [CHAIN_CLONED, CHAIN_SOLITARY], ids=["cloned", "solitary"])
def test_chain_transfers_follow_the_table(mechanism: Mechanism, society: ChainScript) -> None:
    """On Chain, the winner pays the price to the previous winner, v mints b1 - b2 to it."""
    rows, _, accounts, cloned = society
    ledger, _ = _run("chain", mechanism, cloned, rows)
    expected = table_transfers(mechanism.value, rows, CHAIN_REWARDS[len(rows)], accounts)
    assert _transfers(ledger) == expected
    assert audit(ledger).ok


@pytest.mark.parametrize("society", [CHAIN_CLONED, CHAIN_SOLITARY], ids=["cloned", "solitary"])
def test_chain_winner_owns_the_next_state(society: ChainScript) -> None:
    """The winner's primitive moves the chain: the states auctioned follow the winners' L/R."""
    rows, states, accounts, cloned = society
    ledger, policy = _run("chain", Mechanism.CCV, cloned, rows)
    assert policy.states == states
    winners = [e.account for e in ledger.events() if isinstance(e, Allocate)]
    assert winners == [accounts[_sale(row)[0]] for row in rows]


def test_ccv_first_winner_utility_by_hand() -> None:
    """ccv, cloned Chain: R.0 wins step 0 at b2 = 0.60 and sells for b2 = 0.45: U = .99*.45 - .6."""
    rows = CHAIN_CLONED[0]
    ledger, _ = _run("chain", Mechanism.CCV, True, rows)
    u = utilities(ledger.events(), GAMMA)
    assert u[(0, 0, "R.0")] == GAMMA * 45 * C - 60 * C
    assert u[(0, 0, "R.1")] == u[(0, 0, "L.0")] == u[(0, 0, "L.1")] == 0


def test_v_credits_the_seller_b1_by_hand() -> None:
    """v, cloned Chain: L.0 won step 1 and sells step 2 at b1 = 0.70: U = .99*.70 - .45."""
    rows = CHAIN_CLONED[0]
    ledger, _ = _run("chain", Mechanism.V, True, rows)
    u = utilities(ledger.events(), GAMMA)
    assert u[(0, 1, "L.0")] == GAMMA * 70 * C - 45 * C
    mints = [(e.step, e.dst, e.amount) for e in ledger.events() if isinstance(e, Mint)]
    assert (2, "L.0", 40 * C) in mints


BANDIT_ROWS = [
    [10, 80, 30, 30, 55, 20, 40, 80],
    [90, 10, 0, 0, 0, 0, 0, 5],
    [0, 0, 0, 0, 0, 0, 70, 70],
]
BANDIT_ACCOUNTS = tuple(f"arm{i}.{c}" for i in range(4) for c in range(2))
PAYOUTS = [2 * UNIT // 10, 4 * UNIT // 10, 6 * UNIT // 10, 8 * UNIT // 10]


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_bandit_cloned_utilities_follow_the_table(mechanism: Mechanism) -> None:
    """Bandit, cloned: each one-step episode's winner gets payout - price; nothing is minted."""
    ledger, _ = _run("bandit", mechanism, True, BANDIT_ROWS, episodes=len(BANDIT_ROWS))
    got = utilities(ledger.events(), GAMMA)
    expected: dict[tuple[int, int, str], Fraction] = {}
    for ep, row in enumerate(BANDIT_ROWS):
        arm = _sale(row)[0] // 2
        table = table_utilities(mechanism.value, [row], [PAYOUTS[arm]], BANDIT_ACCOUNTS)
        expected |= {(ep, t, a): u for (t, a), u in table.items()}
    assert got == expected
    assert not [e for e in ledger.events() if isinstance(e, Mint)]
    assert audit(ledger).minted == 0


def test_bandit_solitary_bids_reach_the_ledger() -> None:
    """Bandit, solitary: one bidder per arm, each bid recorded in units under its own account."""
    rows = [[10, 20, 30, 40]]
    ledger, _ = _run("bandit", Mechanism.FP, False, rows)
    bids = [(e.account, e.amount) for e in ledger.events() if isinstance(e, Bid)]
    assert bids == [("arm0.0", 10 * C), ("arm1.0", 20 * C), ("arm2.0", 30 * C), ("arm3.0", 40 * C)]
    pays = [(e.src, e.dst, e.amount) for e in ledger.events() if isinstance(e, Pay)]
    assert pays == [("arm3.0", ENVIRONMENT, 40 * C)]


# Duality, solitary: bidders a0.0 a1.0. a0 at 0 falls into the absorbing state 2, which pays
# -1 a step until the 10-step time-out.
DUALITY_ROWS = [[80, 20]] + [[(17 * t) % 101, (29 * t) % 101] for t in range(1, 10)]
DUALITY_REWARDS = [0] + [-UNIT] * 9


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_duality_penalties_follow_the_table(mechanism: Mechanism) -> None:
    """Duality: a negative reward flows winner -> environment and lowers U_t by its size."""
    accounts = ("a0.0", "a1.0")
    ledger, policy = _run("duality", mechanism, False, DUALITY_ROWS)
    assert policy.states == [0] + [2] * 9
    got = utilities(ledger.events(), GAMMA)
    expected = table_utilities(mechanism.value, DUALITY_ROWS, DUALITY_REWARDS, accounts)
    assert got == {(0, t, a): u for (t, a), u in expected.items()}
    assert _transfers(ledger) == table_transfers(
        mechanism.value, DUALITY_ROWS, DUALITY_REWARDS, accounts
    )


def test_bids_outside_the_range_are_clipped_before_the_auction() -> None:
    """A drawn bid is clipped to [0, 1] credit when recorded, and the auction settles on that."""
    ledger, _ = _run("bandit", Mechanism.CCV, False, [[-20, 150, 30, 100]])
    bids = [e.amount for e in ledger.events() if isinstance(e, Bid)]
    assert bids == [0, UNIT, 30 * C, UNIT]
    winners = [e.account for e in ledger.events() if isinstance(e, Allocate)]
    assert winners == ["arm1.0"]  # 1.5 and 1.0 both clip to 1 credit: the lower id wins the tie
    pays = [e.amount for e in ledger.events() if isinstance(e, Pay)]
    assert pays == [UNIT]


# --- one table ---------------------------------------------------------------------------------


class _Sym(str):
    """A bid's name, so a rule can be read out in words: b1 - b2 is "b1 \u2212 b2" (the
    docs' minus sign)."""

    def __sub__(self, other: str) -> _Sym:
        return _Sym(f"{self} \u2212 {other}")


def test_the_docs_table_reads_the_mechanism_table() -> None:
    """docs/engine.md's table shows, for every mechanism, what its row in `RULES` computes."""
    from pathlib import Path

    from market.mechanisms import RULES

    docs = (Path(__file__).parents[1] / "docs" / "engine.md").read_text(encoding="utf-8")
    rows = {
        cells[0].strip("` "): [c.strip() for c in cells[1:]]
        for line in docs.splitlines()
        if line.startswith("| `")
        for cells in [line.strip("|").split("|")]
    }
    assert set(rows) == {m.value for m in RULES}
    b1, b2 = _Sym("b1"), _Sym("b2")
    for mechanism, rule in RULES.items():
        pays, _, minted = rows[mechanism.value][:3]
        assert pays == (rule.price_of(b1, b2) or "nothing")
        assert minted.split(" (")[0] == (rule.mint_of(b1, b2) or "0")
