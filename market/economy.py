"""The Hayek economy's live rules: endowments, budget caps, rent and bankruptcy.

Founders are endowed by the environment at the run's opening. Every bid is capped at the
bidder's balance, and the cap goes into its `Bid` event. Every member alive at an auction
pays rent to the treasury in that auction's transaction. Between episodes, a member whose
balance has fallen below the floor is liquidated (its wealth to the treasury, or its debt
covered from there) and closed, unless it owns the state of an episode still running: a
closed account must never be paid for a state. Balances are the run's own live fold over
the bus, so the rules read the same books the ledger keeps. docs/economy.md gives the
defaults' reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from ledger.events import TREASURY, Close, Liquidate
from ledger.replay import LiveBalances
from ledger.transaction import Body
from ledger.units import to_units


class EconomyConfig(BaseModel):
    """The economy's settings, in credit (docs/economy.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endowment: float = Field(1.0, ge=0, description="each founder's endowment")
    rent: float = Field(0.001, ge=0, description="rent per auction a member is alive for")
    bankrupt_below: float = Field(0.0, description="a balance below this closes the member")


class Economy:
    """Who is alive, what each may bid, and who must close; balances follow the bus."""

    def __init__(self, config: EconomyConfig, members: Iterable[str]) -> None:
        self.config = config
        self.alive: dict[str, bool] = dict.fromkeys(members, True)
        self.live = LiveBalances()
        """The run's live balances (`run_engine` keeps them up to date from the bus)."""
        self.rent = to_units(config.rent)
        self.floor = to_units(config.bankrupt_below)
        self.on_close: list[Callable[[str], None]] = []
        """Called with each account as it closes (learners retire their members)."""

    def endowments(self) -> list[tuple[str, int]]:
        """Each founder's endowment from the environment, for the run's opening."""
        return [(a, to_units(self.config.endowment)) for a in self.alive]

    def cap(self, account: str) -> int:
        """What `account` may bid: its balance, never below 0."""
        return max(self.live.balances.get(account, 0), 0)

    def bankrupt(self, owners: Iterable[str]) -> list[str]:
        """The living members below the floor that own no running episode's state."""
        busy = set(owners)
        balances = self.live.balances
        return [
            a
            for a, alive in self.alive.items()
            if alive and a not in busy and balances.get(a, 0) < self.floor
        ]

    def close(self, account: str) -> list[Body]:
        """The events that liquidate and close `account` (it is alive no more)."""
        balance = self.live.balances.get(account, 0)
        src, dst = (account, TREASURY) if balance >= 0 else (TREASURY, account)
        self.alive[account] = False
        for callback in self.on_close:
            callback(account)
        return [(Liquidate, (src, dst, abs(balance))), (Close, (account, "bankrupt"))]
