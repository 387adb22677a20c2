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
ledger keeps.
docs/economy.md gives the defaults' reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from ledger.events import ENVIRONMENT, TREASURY, Close, Dividend, Endow, Liquidate, Open
from ledger.replay import LiveBalances, postings
from ledger.transaction import Body
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


class Economy:
    """Who is alive in which slot, what each may bid, and who closes or is born."""

    def __init__(self, config: EconomyConfig, society: Society) -> None:
        self.config = config
        founders = society.accounts
        self.capacity = config.max_population or 2 * len(founders)
        if self.capacity < len(founders):
            raise ValueError(
                f"max_population {self.capacity} is below the society's {len(founders)} founders"
            )
        vacant = self.capacity - len(founders)
        self.seats = Seats([*founders, *[None] * vacant])
        self.accounts = self.seats.accounts
        """Each slot's member (None: free). The kernel reads it live."""
        self.primitive: list[int] = [*society.primitive_of, *[0] * vacant]
        """Each slot's primitive (a free slot's is meaningless)."""
        self.names = society.primitive_names
        self.alive: dict[str, bool] = dict.fromkeys(founders, True)
        self.parent: dict[str, str] = {}
        """Each child's parent (the account that endowed it)."""
        self.live = LiveBalances()
        """The run's live balances (`run_engine` keeps them up to date from the bus)."""
        self.rent = to_units(config.rent)
        self.floor = to_units(config.bankrupt_below)
        self.endowment = to_units(config.endowment)
        self.birth_above = to_units(config.birth_threshold())
        self.share = round(config.dividend * _SHARE)
        self._high: dict[str, int] = {}
        """Each child's balance after its last dividend, or its endowment (its high-water
        mark)."""
        self._born = [society.copies] * len(self.names)
        """The next account number of each primitive (founders hold 0 and, cloned, 1)."""

    @classmethod
    def restore(cls, config: EconomyConfig, society: Society, events: pl.LazyFrame) -> Economy:
        """The economy as a ledger's events left it (to resume a run): the founders, then
        every birth into the lowest free slot and every close freeing one, in sequence
        order, as the kernel made them; each child's high-water mark is its balance after
        its last dividend, or its endowment. Balances are the run's to fill in."""
        economy = cls(config, society)
        rows = (  # births and deaths only: one row per member, not per auction
            events.filter(pl.col("kind").is_in(["endow", "close"]))
            .select("seq", "kind", "account", "src", "dst", "amount")
            .sort("seq")
            .collect(engine="streaming")
        )
        for _, kind, account, src, dst, amount in rows.iter_rows():
            if kind == "endow" and src != ENVIRONMENT:
                economy._place(economy.accounts.index(src), dst)
                economy._high[dst] = amount
            elif kind == "close":
                economy._free(account)
        dividends = (
            events.filter(pl.col("kind") == "dividend")
            .group_by("src")
            .agg(pl.col("seq").max())
            .collect(engine="streaming")
        )
        last_dividend: dict[str, int] = dict(dividends.iter_rows())
        if last_dividend:
            marks = _balances_after(events, last_dividend)
            economy._high.update(marks)
        return economy

    def endowments(self) -> list[tuple[str, int]]:
        """Each founder's endowment from the environment, for the run's opening."""
        return [(a, self.endowment) for a in self.alive]

    def cap(self, account: str) -> int:
        """What `account` may bid: its balance, never below 0."""
        return max(self.live.balances.get(account, 0), 0)

    @property
    def population(self) -> int:
        """How many members are alive."""
        return len(self.accounts) - self.accounts.count(None)

    def members(self) -> list[int]:
        """The slots of the living members, in slot order."""
        return [i for i, a in enumerate(self.accounts) if a is not None]

    def solvent(self, members: list[int]) -> list[int]:
        """Those of `members` (slots) whose balance is not below the floor: the ones that
        bid. An insolvent member sits out every auction until it closes."""
        balances, floor = self.live.balances, self.floor
        return [i for i in members if balances.get(cast(str, self.accounts[i]), 0) >= floor]

    def settle(self, owners: set[str]) -> list[Body]:
        """The events of one settlement between episodes: the bankrupt among those owning
        no running episode's state close, children pay dividends, the rich found children."""
        balance = dict(self.live.balances)
        own: list[Body] = []
        for account in self.bankrupt(owners):
            own += self.close(account)
            balance[account] = 0
        if self.share:
            own += self._dividends(balance)
        if self.config.births:
            own += self._births(balance)
        return own

    def bankrupt(self, owners: set[str]) -> list[str]:
        """The living members below the floor that own no running episode's state."""
        balances = self.live.balances
        return [
            a
            for a in self.accounts
            if a is not None and a not in owners and balances.get(a, 0) < self.floor
        ]

    def close(self, account: str) -> list[Body]:
        """The events that liquidate and close `account`; its slot is freed."""
        balance = self.live.balances.get(account, 0)
        src, dst = (account, TREASURY) if balance >= 0 else (TREASURY, account)
        self._free(account)
        return [(Liquidate, (src, dst, abs(balance))), (Close, (account, "bankrupt"))]

    def _free(self, account: str) -> None:
        """`account` is dead: its slot is free."""
        self.alive[account] = False
        self.seats.free(account)

    def _place(self, slot: int, child: str) -> None:
        """Seat `child` of the member in `slot` (`Seats.seat`), running the parent's
        primitive."""
        child_slot = self.seats.seat(child)
        p = self.primitive[slot]
        self.primitive[child_slot] = p
        self.alive[child], self.parent[child] = True, self.accounts[slot] or ""
        self._born[p] = max(self._born[p], int(child.rsplit(".", 1)[1]) + 1)

    def _dividends(self, balance: dict[str, int]) -> list[Body]:
        """Each living child's share of its profit above its high-water mark, to its living
        parent; `balance` is updated. The mark is the child's balance after its last
        dividend (its endowment before any), so it is a fold over the ledger too."""
        own: list[Body] = []
        for child in self.accounts:
            parent = self.parent.get(child) if child is not None else None
            if child is None or parent is None or not self.alive[parent]:
                continue
            gain = balance.get(child, 0) - self._high[child]
            paid = gain * self.share // _SHARE if gain > 0 else 0
            if paid:
                own.append((Dividend, (child, parent, paid)))
                balance[child] = self._high[child] = balance.get(child, 0) - paid
                balance[parent] = balance.get(parent, 0) + paid
        return own

    def _births(self, balance: dict[str, int]) -> list[Body]:
        """A child for each member richer than the threshold, while a slot is free (parents
        in slot order); `balance` is updated."""
        own: list[Body] = []
        for slot, parent in enumerate(list(self.accounts)):
            if parent is None or balance.get(parent, 0) <= self.birth_above:
                continue
            if balance[parent] - self.endowment < self.floor or None not in self.accounts:
                continue
            p = self.primitive[slot]
            child = f"{self.names[p]}.{self._born[p]}"
            self._place(slot, child)
            balance[parent] -= self.endowment
            balance[child] = self._high[child] = self.endowment
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
