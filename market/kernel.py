"""The episode kernel: the reference, one auction at a time, each its own transaction.

One step of an episode, as one atomic transaction on the bus:
  Bid (every bidder) -> Allocate (argmax, lowest id on ties) -> Pay (+ Mint)
  -> Transform (the winner's primitive) -> Reward; then SimPy time advances by the
transformation's duration. `concurrency` episodes run at once as the slots of the slot
scheduler (`market.slots.SlotKernel`), whose single sequence counter totally orders their
events. At each instant the due slots go in the order they became due (first scheduled,
first served, as SimPy serves its events): those whose episode ended settle the economy
and start the next episode, then every due slot's bids come from one policy call, and each
slot's auction is settled, stepped and published in turn, so with an economy each auction's
budget caps read the balances every earlier transaction left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
from numpy.typing import NDArray

from ledger.events import (
    AUCTIONEER,
    ENVIRONMENT,
    TREASURY,
    Allocate,
    Bid,
    EpisodeEnd,
    EpisodeStart,
    Mint,
    Pay,
    Rent,
    Reward,
    Transform,
)
from ledger.transaction import Body, Transaction
from ledger.units import quantise_bids, to_units
from market.core import Budget, EpisodeResult, Start
from market.economy import Economy
from market.mechanisms import Mechanism, Settlement, settle
from market.slots import IDLE, RUNNING, SlotKernel, Stepped
from market.society import Policy, Society
from market.tasks import Outcome, Task

EXTINCT = "the society went extinct: no living member has credit left to bid"
"""Why an economy's run stops before its budget."""


class Kernel(SlotKernel):
    """Runs auction episodes of one task, society and mechanism into a bus."""

    def __init__(
        self,
        start: Start,
        *,
        task: Task,
        society: Society,
        mechanism: Mechanism,
        policy: Policy,
        gamma: float,
        economy: Economy | None = None,
    ) -> None:
        """With an `economy`, the bidders are its slots: only living members bid, each up
        to its balance, and pay rent each auction; between episodes the economy settles
        (bankruptcies, dividends, births)."""
        super().__init__(start, policy)
        self.economy = economy
        self.task, self.society = task, society
        self.mechanism, self.policy, self.gamma = mechanism, policy, gamma
        if economy is not None:  # it folds its settlements' events, after the live balances
            self.bus.subscribe_all(economy.apply)

    @property
    def _accounts(self) -> Sequence[str]:
        """Each bidder's account: the society's, or the economy's slots as its members are
        now (a free slot never bids)."""
        if self.economy is None:
            return self.society.accounts
        return cast(list[str], self.economy.accounts)

    @property
    def _prims(self) -> Sequence[int]:
        """Each bidder's primitive."""
        return self.society.primitive_of if self.economy is None else self.economy.primitive

    def _schedule(self, slots: int) -> None:
        """Each slot's state up for auction and its seller; the order the slots became due."""
        if self.driven and slots > 1:
            raise ValueError("a driven run on the episode kernel runs one episode at a time")
        self._states = [0] * slots
        self._sellers = [ENVIRONMENT] * slots
        self._owners: dict[int, str] = {}
        """Per slot that has auctioned in its running episode, its current seller: a member
        that must not close yet."""
        self._ticket = np.arange(slots)
        self._tickets = slots
        super()._schedule(slots)

    def _order(self, due: NDArray[np.int64]) -> NDArray[np.int64]:
        """First due, first served: in the order the slots were last scheduled."""
        return due[np.argsort(self._ticket[due], kind="stable")]

    def _start(
        self,
        idx: NDArray[np.int64],
        budget: Budget,
        on_episode: Callable[[EpisodeResult], None] | None,
    ) -> None:
        """Slot by slot: an ended episode settles the economy and is reported; then the slot
        starts the next episode if the budget allows and someone can bid, else retires."""
        for i in idx.tolist():
            if self._ended[i]:
                self._ended[i] = False
                self._finish(i, on_episode)
            if not budget.allows(self.next_episode, self.steps):
                self._status[i] = IDLE
            elif self.economy is not None and not self.economy.solvent(self.economy.living()):
                self.stopped = EXTINCT  # nobody is left who can bid, or ever will
                self._status[i] = IDLE
            else:
                self._status[i] = RUNNING
                self._ep[i], self._t[i], self._total[i] = self.next_episode, 0, 0
                self.next_episode += 1
                self._begin(np.array([i]))

    def _begin(self, slots: NDArray[np.int64]) -> None:
        """Each starting slot's episode begins at its start state, the environment selling."""
        for i, state in zip(
            slots.tolist(), self.task.starts(self._ep[slots]).tolist(), strict=True
        ):
            self._states[i], self._sellers[i] = int(state), ENVIRONMENT

    def _finish(self, i: int, on_episode: Callable[[EpisodeResult], None] | None) -> None:
        """Slot `i`'s episode is over: the economy settles, and the episode is reported
        (unless it ended before its first auction)."""
        self._owners.pop(i, None)
        if self.economy is not None:
            self._settle()
        if on_episode is not None and self._t[i]:
            on_episode(EpisodeResult(int(self._ep[i]), int(self._t[i]), int(self._total[i])))

    def _settle(self) -> None:
        """The economy's settlement between episodes (bankruptcies, dividends, births), as
        one transaction; a member owning a running episode's state does not close yet."""
        assert self.economy is not None
        own = self.economy.settle(set(self._owners.values()))
        if own:
            self.bus.publish(Transaction((self.seq, self.run, -1, -1, self.env.now), own))
            self.seq += len(own)

    def _question(self, slots: NDArray[np.int64]) -> tuple[NDArray[np.int64]]:
        """The states up for auction."""
        return (np.array([self._states[i] for i in slots.tolist()], dtype=np.int64),)

    def _decide(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Every bidder's bid for each state: one policy call for the instant's auctions."""
        return self.policy.bids(states)

    def _step(self, slots: NDArray[np.int64], now: float, answer: Any) -> Stepped:
        """Each due slot's auction on its row of `answer`, in turn, each published as it is
        settled; a slot whose economy has no member left to bid ends its episode instead."""
        n = len(slots)
        reward, duration = np.zeros(n, dtype=np.int64), np.zeros(n)
        last, took = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
        for k, (i, drawn) in enumerate(zip(slots.tolist(), np.asarray(answer), strict=True)):
            stepped = self._auction(i, quantise_bids(drawn.tolist()), now)
            if stepped is None:
                took[k] = False
                continue
            reward[k], duration[k], last[k] = stepped
            self._ticket[i], self._tickets = self._tickets, self._tickets + 1
        return Stepped(None, reward, duration, last, took)

    def _auction(self, i: int, bids: list[int], now: float) -> tuple[int, float, bool] | None:
        """Slot `i`'s auction on `bids` (in units), published: its reward, duration and
        whether it ended the episode; None if no member could bid (the episode ended)."""
        ep, t, state = int(self._ep[i]), int(self._t[i]), self._states[i]
        members = caps = renters = None
        rent = 0
        if self.economy is not None:
            renters, members, caps, bids = self._budgets(bids)
            rent = self.economy.rent
            if not members:  # everyone went bankrupt while this episode ran
                self._extinct(i, now)
                return None
        s = settle(self.mechanism, bids, first_sale=t == 0)
        if members is not None:
            s = s._replace(winner=members[s.winner])  # from the living to all bidders
        out = self.task.step(state, self._prims[s.winner])
        reward = to_units(out.reward)
        total = int(self._total[i]) + reward
        seller = self._sellers[i]
        step = _Step(ep, t, state, bids, seller, s, out, reward, members, caps, renters, rent)
        last = out.done or t == self.task.horizon - 1
        self.bus.publish(self._step_events(step, total if last else None, now))
        self._states[i], self._sellers[i] = out.next_state, self._accounts[s.winner]
        self._owners[i] = self._sellers[i]
        return reward, out.duration, last

    def _extinct(self, i: int, now: float) -> None:
        """End slot `i`'s episode before its next auction: no member is left to buy its
        state. It settles and retires: with no member able to bid, none can be born."""
        self.stopped = EXTINCT
        self._status[i] = IDLE
        ep, t, total = int(self._ep[i]), int(self._t[i]), int(self._total[i])
        if t > 0:
            own: list[Body] = [(EpisodeEnd, (t, total))]
            self.bus.publish(Transaction((self.seq, self.run, ep, t, now), own))
            self.seq += 1
        self._finish(i, self._on_episode)

    def _budgets(self, bids: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
        """The living members' ids (who pay rent); the solvent ones' ids (who bid), their
        caps (their balances) and their capped bids."""
        assert self.economy is not None
        cap = self.economy.cap
        living = self.economy.living()
        members = self.economy.solvent(living)
        caps = [cap(self._accounts[i]) for i in members]
        capped = [min(bids[i], c) for i, c in zip(members, caps, strict=True)]
        return living, members, caps, capped

    def _recorded(self, state: int) -> list[float] | None:
        """What the task observed of `state`, as a Transform or EpisodeStart records it."""
        if not self.task.records:
            return None
        seen: list[float] = self.task.recorded(np.array([state], dtype=np.int64))[0].tolist()
        return seen

    def _step_events(self, st: _Step, episode_return: int | None, now: float) -> Transaction:
        """The events of one auction step, numbered from the kernel's sequence counter.

        Speed: the compact form, not models (see `ledger.transaction`): one header, then each
        event's model and own values in `OWN` order; `tests/test_kernel.py` validates every
        event of real runs against its model.
        """
        s, out, state, bids, prims = st.settlement, st.outcome, st.state, st.bids, self._prims
        w, winner = s.winner, self._accounts[s.winner]
        own: list[Body] = []
        if st.t == 0:
            opened = (self.task.name, self.mechanism.value, self.society.cloned, self.gamma)
            own.append((EpisodeStart, (*opened, state, self._recorded(state))))
        if st.members is None:
            bidders = zip(self._accounts, prims, bids, strict=True)
            own += [(Bid, (a, p, state, b, None)) for a, p, b in bidders]  # no cap: no budget
        else:
            capped = zip(st.members, bids, st.caps or [], strict=True)
            own += [(Bid, (self._accounts[i], prims[i], state, b, c)) for i, b, c in capped]
        own.append((Allocate, (winner, prims[w], state, s.b1)))
        if s.price is not None:
            own.append((Pay, (winner, st.seller, s.price)))
        if s.mint:
            own.append((Mint, (AUCTIONEER, st.seller, s.mint)))
        moved = (state, out.next_state, out.duration, out.done, self._recorded(out.next_state))
        own.append((Transform, (winner, prims[w], *moved)))
        paid_to = (ENVIRONMENT, winner) if st.reward >= 0 else (winner, ENVIRONMENT)
        own.append((Reward, (*paid_to, abs(st.reward))))
        if st.renters is not None and st.rent:
            own += [(Rent, (self._accounts[i], TREASURY, st.rent)) for i in st.renters]
        if episode_return is not None:
            own.append((EpisodeEnd, (st.t + 1, episode_return)))
        header = (self.seq, self.run, st.ep, st.t, now)
        self.seq += len(own)
        return Transaction(header, own)


class _Step(NamedTuple):
    """What one auction step decided, before it becomes events."""

    ep: int
    t: int
    state: int
    bids: list[int]
    seller: str
    settlement: Settlement
    outcome: Outcome
    reward: int
    members: list[int] | None = None
    """With an economy: the solvent members, who bid in this auction (their ids), else None
    (all)."""
    caps: list[int] | None = None
    """With an economy: each solvent member's budget cap."""
    renters: list[int] | None = None
    """With an economy: the living members, who pay rent for this auction."""
    rent: int = 0
    """With an economy: what each living bidder pays the treasury for this auction."""
