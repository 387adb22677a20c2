"""The Hayek economy's live rules: endowments, budgets, rent, bankruptcy, dividends and births.

Founders are endowed by the environment at the run's opening. Every bid is capped at the
bidder's balance, and the cap goes into its `Bid` event. A member whose balance is below the
floor is insolvent: it sits out every auction (it may still be paid for a state it owns,
and be solvent again). Every member alive at an auction pays rent to the treasury in that
auction's transaction. Between episodes the economy
settles, in one transaction:
- a member whose balance has fallen below the floor is liquidated (its wealth to the
  treasury, or its debt covered from there) and closed, unless it owns the state of an
  episode still running: a closed account must never be paid for a state;
- a child pays its living parent the `dividend` share of its profit since the last payment
  (above its high-water mark);
- a member richer than `birth_above` founds a child while the population is under its cap:
  the child is opened and endowed from the parent's wealth, runs the parent's primitive, and
  starts from a copy of its parent's policy with perturbed parameters (or a fresh one).

Members live in slots, a fixed number (`max_population`) of bidder columns: a founder holds
its slot from the start, a child takes the lowest free one, and a dead member's slot is
freed. Policies bid for every slot; only the living, solvent members bid in an auction.
Balances are the run's own live fold over the bus, so the rules read the same books the
ledger keeps. Who sits where is a fold too (`Members`): `Economy.settle` is pure (it decides
on a copy), and the economy learns of its births, closes and dividends only from the
settlement's events as the bus delivers them (`Economy.apply`), as a resumed run
(`Economy.restore`) and the learners do.
docs/economy.md gives the defaults' reasons.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from ledger.events import (
    ENVIRONMENT,
    TREASURY,
    Close,
    Dividend,
    Endow,
    EventBase,
    Liquidate,
    Open,
)
from ledger.replay import LiveBalances, postings
from ledger.transaction import TRANSFER_TYPES, Body, Transaction
from ledger.units import to_units
from market.society import Society

_SHARE = 10**9
"""Dividend shares are applied as an integer fraction of this, so payments stay exact."""


class EconomyConfig(BaseModel):
    """The economy's settings, in credit (docs/economy.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endowment: float = Field(1.0, ge=0, description="each founder's and each child's endowment")
    rent: float = Field(0.001, ge=0, description="rent per auction a member is alive for")
    bankrupt_below: float = Field(0.0, description="a balance below this closes the member")
    births: bool = Field(True, description="rich members found children")
    birth_above: float | None = Field(
        None, ge=0, description="a member richer than this founds a child (None: 4 x endowment)"
    )
    child: Literal["copy", "fresh"] = Field(
        "copy", description="a child's policy: its parent's, perturbed, or a fresh one"
    )
    mutation: float = Field(0.01, ge=0, description="the perturbation's standard deviation")
    dividend: float = Field(0.0, ge=0, le=1, description="a child's profit share to its parent")
    max_population: int | None = Field(
        None, ge=1, description="the most members alive at once (None: 2 x the founders)"
    )

    def birth_threshold(self) -> float:
        """The wealth above which a member founds a child."""
        return self.birth_above if self.birth_above is not None else 4 * self.endowment


class Seats:
    """Which member sits in which slot: a child takes the lowest free slot, and a closed
    member's slot is freed. A fold over the ledger's births and closes, so the kernel, a
    resumed run and the learners (each from the events it hears) seat members alike."""

    def __init__(self, accounts: Sequence[str | None]) -> None:
        self.accounts: list[str | None] = list(accounts)
        """Each slot's member (None: free); changed in place, never replaced."""

    def free(self, account: str) -> int:
        """`account` closed: its slot, now free."""
        slot = self.accounts.index(account)
        self.accounts[slot] = None
        return slot

    def seat(self, child: str) -> int:
        """`child` was born: the slot it now holds."""
        slot = self.accounts.index(None)
        self.accounts[slot] = child
        return slot


class Members:
    """Who is alive in which slot, whose child each is, and each child's high-water mark:
    the economy's state, changed only by the events of its settlements (and the founders)."""

    def __init__(self, society: Society, capacity: int) -> None:
        founders = society.accounts
        vacant = capacity - len(founders)
        self.seats = Seats([*founders, *[None] * vacant])
        self.primitive: list[int] = [*society.primitive_of, *[0] * vacant]
        """Each slot's primitive (a free slot's is meaningless); changed in place."""
        self.alive: dict[str, bool] = dict.fromkeys(founders, True)
        self.parent: dict[str, str] = {}
        """Each child's parent (the account that endowed it)."""
        self.high: dict[str, int] = {}
        """Each child's balance after its last dividend, or its endowment (its high-water
        mark)."""
        self.born = [society.copies] * len(society.primitive_names)
        """The next account number of each primitive (founders hold 0 and, cloned, 1)."""

    @property
    def accounts(self) -> list[str | None]:
        """Each slot's member (None: free)."""
        return self.seats.accounts

    def copy(self) -> Members:
        """A copy to decide on: changing it leaves this one as it is (its containers are
        copied; what they hold is immutable)."""
        twin = copy.copy(self)
        twin.seats = Seats(self.accounts)
        twin.primitive, twin.born = list(self.primitive), list(self.born)
        twin.alive, twin.parent, twin.high = dict(self.alive), dict(self.parent), dict(self.high)
        return twin

    def fold(self, model: type[EventBase], values: tuple[Any, ...]) -> None:
        """One settlement event: a `Close` frees its account's slot, an `Endow` from a
        member seats its child; other events change no member."""
        if model is Close:
            self.close(values[0])
        elif model is Endow and values[0] != ENVIRONMENT:
            self.birth(values[0], values[1], values[2])

    def close(self, account: str) -> None:
        """`account` closed: it is dead and its slot free."""
        self.alive[account] = False
        self.seats.free(account)

    def birth(self, parent: str, child: str, endowment: int) -> None:
        """`parent` endowed `child`: the child takes the lowest free slot, runs the parent's
        primitive, and its high-water mark is its endowment."""
        slot = self.seats.seat(child)
        p = self.primitive[self.accounts.index(parent)]
        self.primitive[slot] = p
        self.alive[child], self.parent[child] = True, parent
        self.high[child] = endowment
        self.born[p] = max(self.born[p], int(child.rsplit(".", 1)[1]) + 1)


class Economy:
    """The economy's rules over its members (`Members`): what each may bid, and who closes
    or is born at a settlement."""

    def __init__(self, config: EconomyConfig, society: Society) -> None:
        self.config = config
        self.capacity = config.max_population or 2 * len(society.accounts)
        if self.capacity < len(society.accounts):
            raise ValueError(
                f"max_population {self.capacity} is below the society's "
                f"{len(society.accounts)} founders"
            )
        self.members = Members(society, self.capacity)
        """The members as the settlements' events have left them."""
        self.names = society.primitive_names
        self.live = LiveBalances()
        """The run's live balances (the run keeps them up to date from the bus)."""
        self.rent = to_units(config.rent)
        self.floor = to_units(config.bankrupt_below)
        self.endowment = to_units(config.endowment)
        self.birth_above = to_units(config.birth_threshold())
        self.share = round(config.dividend * _SHARE)

    @property
    def accounts(self) -> list[str | None]:
        """Each slot's member (None: free)."""
        return self.members.accounts

    @property
    def primitive(self) -> list[int]:
        """Each slot's primitive (a free slot's is meaningless); a bidder may hold it, as
        it is changed in place."""
        return self.members.primitive

    @property
    def parent(self) -> dict[str, str]:
        """Each child's parent."""
        return self.members.parent

    @classmethod
    def restore(cls, config: EconomyConfig, society: Society, events: pl.LazyFrame) -> Economy:
        """The economy as a ledger's events left it (to resume a run): the founders, then
        every birth and every close in sequence order (`Members.fold`, as `apply`); each child's
        high-water mark is its balance after its last dividend, or its endowment. Balances
        are the run's to fill in."""
        economy = cls(config, society)
        members = economy.members
        rows = (  # births and deaths only: one row per member, not per auction
            events.filter(pl.col("kind").is_in(["endow", "close"]))
            .select("seq", "kind", "account", "src", "dst", "amount")
            .sort("seq")
            .collect(engine="streaming")
        )
        for _, kind, account, src, dst, amount in rows.iter_rows():
            if kind == "close":
                members.fold(Close, (account,))
            else:
                members.fold(Endow, (src, dst, amount))
        dividends = (
            events.filter(pl.col("kind") == "dividend")
            .group_by("src")
            .agg(pl.col("seq").max())
            .collect(engine="streaming")
        )
        last_dividend: dict[str, int] = dict(dividends.iter_rows())
        if last_dividend:
            members.high.update(_balances_after(events, last_dividend))
        return economy

    def apply(self, tx: Transaction) -> None:
        """Fold a settlement's events into the members (a bus subscriber after the run's
        live balances, which already hold the transaction): a close frees its slot, an
        endowment from a member seats its child, a dividend marks its payer's balance just
        after it."""
        if tx.header[2] != -1:  # an episode's auction: no one is born or closes there
            return
        later: dict[str, int] = {}  # each account's change after the event at hand
        marks: dict[str, int] = {}
        for model, values in reversed(tx.body):
            if model is Dividend and values[0] not in marks:
                child = values[0]
                marks[child] = self.live.balances.get(child, 0) - later.get(child, 0)
            if model in TRANSFER_TYPES:
                src, dst, amount = values[0], values[1], values[2]
                later[src] = later.get(src, 0) - amount
                later[dst] = later.get(dst, 0) + amount
        for model, values in tx.body:
            self.members.fold(model, values)
        self.members.high.update(marks)

    def endowments(self) -> list[tuple[str, int]]:
        """Each founder's endowment from the environment, for the run's opening."""
        return [(a, self.endowment) for a in self.members.alive]

    def cap(self, account: str) -> int:
        """What `account` may bid: its balance, never below 0."""
        return max(self.live.balances.get(account, 0), 0)

    @property
    def population(self) -> int:
        """How many members are alive."""
        return len(self.accounts) - self.accounts.count(None)

    def living(self) -> list[int]:
        """The slots of the living members, in slot order."""
        return [i for i, a in enumerate(self.accounts) if a is not None]

    def solvent(self, members: list[int]) -> list[int]:
        """Those of `members` (slots) whose balance is not below the floor: the ones that
        bid. An insolvent member sits out every auction until it closes."""
        balances, floor = self.live.balances, self.floor
        return [i for i in members if balances.get(cast(str, self.accounts[i]), 0) >= floor]

    def settle(self, owners: set[str]) -> list[Body]:
        """The events of one settlement between episodes: the bankrupt among those owning
        no running episode's state close, children pay dividends, the rich found children.
        Decided on a copy of the members: they change when the events are applied."""
        members = self.members.copy()
        balance = dict(self.live.balances)
        own: list[Body] = []
        for account in self.bankrupt(owners):
            own += self._close(members, account)
            balance[account] = 0
        if self.share:
            own += self._dividends(members, balance)
        if self.config.births:
            own += self._births(members, balance)
        return own

    def bankrupt(self, owners: set[str]) -> list[str]:
        """The living members below the floor that own no running episode's state."""
        balances = self.live.balances
        return [
            a
            for a in self.accounts
            if a is not None and a not in owners and balances.get(a, 0) < self.floor
        ]

    def _close(self, members: Members, account: str) -> list[Body]:
        """The events that liquidate and close `account`; its slot is freed."""
        balance = self.live.balances.get(account, 0)
        src, dst = (account, TREASURY) if balance >= 0 else (TREASURY, account)
        members.close(account)
        return [(Liquidate, (src, dst, abs(balance))), (Close, (account, "bankrupt"))]

    def _dividends(self, members: Members, balance: dict[str, int]) -> list[Body]:
        """Each living child's share of its profit above its high-water mark, to its living
        parent; `balance` is updated. The mark is the child's balance after its last
        dividend (its endowment before any), so it is a fold over the ledger too."""
        own: list[Body] = []
        for child in members.accounts:
            parent = members.parent.get(child) if child is not None else None
            if child is None or parent is None or not members.alive[parent]:
                continue
            gain = balance.get(child, 0) - members.high[child]
            paid = gain * self.share // _SHARE if gain > 0 else 0
            if paid:
                own.append((Dividend, (child, parent, paid)))
                balance[child] = members.high[child] = balance.get(child, 0) - paid
                balance[parent] = balance.get(parent, 0) + paid
        return own

    def _births(self, members: Members, balance: dict[str, int]) -> list[Body]:
        """A child for each member richer than the threshold, while a slot is free (parents
        in slot order); `balance` is updated."""
        own: list[Body] = []
        for slot, parent in enumerate(list(members.accounts)):
            if parent is None or balance.get(parent, 0) <= self.birth_above:
                continue
            if balance[parent] - self.endowment < self.floor or None not in members.accounts:
                continue
            p = members.primitive[slot]
            child = f"{self.names[p]}.{members.born[p]}"
            members.birth(parent, child, self.endowment)
            balance[parent] -= self.endowment
            balance[child] = self.endowment
            own += [(Open, (child,)), (Endow, (parent, child, self.endowment))]
        return own


def _balances_after(events: pl.LazyFrame, at: dict[str, int]) -> dict[str, int]:
    """Each account's balance just after its event numbered `at[account]`."""
    wanted = pl.DataFrame({"account": list(at), "upto": list(at.values())}).lazy()
    held = (
        postings(events)
        .join(wanted, on="account")
        .filter(pl.col("seq") <= pl.col("upto"))
        .group_by("account")
        .agg(pl.col("delta").cast(pl.Int128).sum())
        .collect(engine="streaming")
    )
    return {a: int(v) for a, v in held.iter_rows()}
