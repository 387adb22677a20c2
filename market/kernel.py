"""The SimPy kernel: each running episode is a process that holds one auction per step.

One step of an episode, as one atomic transaction on the bus:
  Bid (every bidder) -> Allocate (argmax, lowest id on ties) -> Pay (+ Mint)
  -> Transform (the winner's primitive) -> Reward; then SimPy time advances by the
transformation's duration. `concurrency` episodes run at once in one environment; the
kernel's single sequence counter totally orders their events.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import NamedTuple, cast

import numpy as np
import simpy

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
from market.core import Core, EpisodeResult, Start
from market.economy import Economy
from market.mechanisms import Mechanism, Settlement, settle
from market.society import Policy, Society
from market.tasks import Outcome, Task

EXTINCT = "the society went extinct: no living member has credit left to bid"
"""Why an economy's run stops before its budget."""


class Kernel(Core):
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
        self._owners: dict[int, str] = {}
        """Each running episode's current seller: a member that must not close yet."""
        self.task, self.society = task, society
        self.mechanism, self.policy, self.gamma = mechanism, policy, gamma
        if economy is not None:  # it folds its settlements' events, after the live balances
            self.bus.subscribe_all(economy.apply)
        self._waiting: list[tuple[int, simpy.Event]] = []

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
        """A SimPy process per slot, each running one episode after another."""
        if self.driven and slots > 1:
            raise ValueError("a driven run on the episode kernel runs one episode at a time")
        for _ in range(slots):
            self.env.process(self._worker(self._on_episode))

    def _worker(
        self, on_episode: Callable[[EpisodeResult], None] | None
    ) -> Generator[simpy.Event, list[int], None]:
        while self._budget.allows(self.next_episode, self.steps):
            if self.economy is not None and not self.economy.solvent(self.economy.living()):
                self.stopped = EXTINCT
                return  # nobody is left who can bid, or ever will
            ep = self.next_episode
            self.next_episode += 1
            result = yield from self._episode(ep)
            if self.economy is not None:
                self._settle()
            if on_episode is not None and result.steps:  # not one ended before its 1st auction
                on_episode(result)

    def _settle(self) -> None:
        """The economy's settlement between episodes (bankruptcies, dividends, births), as
        one transaction; a member owning a running episode's state does not close yet."""
        assert self.economy is not None
        own = self.economy.settle(set(self._owners.values()))
        if own:
            self.bus.publish(Transaction((self.seq, self.run, -1, -1, self.env.now), own))
            self.seq += len(own)

    def _episode(self, ep: int) -> Generator[simpy.Event, list[int], EpisodeResult]:
        task, seller, total = self.task, ENVIRONMENT, 0
        state = int(task.starts(np.array([ep], dtype=np.int64))[0])
        for t in range(task.horizon):
            bids = yield from self._bids(state)
            members = caps = renters = None
            rent = 0
            if self.economy is not None:
                renters, members, caps, bids = self._budgets(bids)
                rent = self.economy.rent
                if not members:  # everyone went bankrupt while this episode ran
                    return self._extinct(ep, t, total)
            s = settle(self.mechanism, bids, first_sale=t == 0)
            if members is not None:
                s = s._replace(winner=members[s.winner])  # from the living to all bidders
            out = task.step(state, self._prims[s.winner])
            reward = to_units(out.reward)
            total += reward
            self.steps += 1
            step = _Step(ep, t, state, bids, seller, s, out, reward, members, caps, renters, rent)
            last = out.done or t == task.horizon - 1
            self.bus.publish(self._step_events(step, episode_return=total if last else None))
            state, seller = out.next_state, self._accounts[s.winner]
            self._owners[ep] = seller
            yield self.env.timeout(out.duration)
            if last:
                del self._owners[ep]
                return EpisodeResult(ep, t + 1, total)
        raise AssertionError("unreachable: the last step of the horizon returns above")

    def _bids(self, state: int) -> Generator[simpy.Event, list[int], list[int]]:
        """Every bidder's bid for `state`, in units.

        With several episodes running, the bids of all episodes auctioning at the same SimPy
        time come from one policy call (a round): the first to ask schedules the round with
        a zero delay, which SimPy runs after every episode already due at that time.
        """
        if self._concurrency == 1:
            states = np.array([state], dtype=np.int64)
            if self.driven:
                drawn = (yield from self._asked(states))[0]
            else:
                drawn = self.policy.bids(states)[0]
            return quantise_bids(drawn.tolist())
        if not self._waiting:
            self.env.timeout(0).callbacks.append(self._draw_round)
        ready = self.env.event()
        self._waiting.append((state, ready))
        bids: list[int] = yield ready
        return bids

    def _extinct(self, ep: int, t: int, total: int) -> EpisodeResult:
        """End episode `ep` before its auction `t`: no member is left to buy its state."""
        self.stopped = EXTINCT
        self._owners.pop(ep, None)
        if t > 0:
            own: list[Body] = [(EpisodeEnd, (t, total))]
            self.bus.publish(Transaction((self.seq, self.run, ep, t, self.env.now), own))
            self.seq += 1
        return EpisodeResult(ep, t, total)

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

    def _draw_round(self, _round: simpy.Event) -> None:
        waiting, self._waiting = self._waiting, []
        drawn = self.policy.bids(np.array([state for state, _ in waiting], dtype=np.int64))
        for (_, ready), row in zip(waiting, drawn.tolist(), strict=True):
            ready.succeed(quantise_bids(row))

    def _recorded(self, state: int) -> list[float] | None:
        """What the task observed of `state`, as a Transform or EpisodeStart records it."""
        if not self.task.records:
            return None
        seen: list[float] = self.task.recorded(np.array([state], dtype=np.int64))[0].tolist()
        return seen

    def _step_events(self, st: _Step, episode_return: int | None) -> Transaction:
        """The events of one auction step, numbered from the kernel's sequence counter.

        Speed: the compact form, not models (see `ledger.transaction`): one header, then each
        event's model and own values in `OWN` order; `tests/test_kernel.py` validates every
        event of real runs against its model.
        """
        s, out, state, bids = st.settlement, st.outcome, st.state, st.bids
        accounts, prims = self._accounts, self._prims
        w, winner = s.winner, accounts[s.winner]
        own: list[Body] = []
        if st.t == 0:
            opened = (self.task.name, self.mechanism.value, self.society.cloned, self.gamma)
            own.append((EpisodeStart, (*opened, state, self._recorded(state))))
        if st.members is None:
            bidders = zip(accounts, prims, bids, strict=True)
            own += [(Bid, (a, p, state, b, None)) for a, p, b in bidders]  # no cap: no budget
        else:
            capped = zip(st.members, bids, st.caps or [], strict=True)
            own += [(Bid, (accounts[i], prims[i], state, b, c)) for i, b, c in capped]
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
            own += [(Rent, (accounts[i], TREASURY, st.rent)) for i in st.renters]
        if episode_return is not None:
            own.append((EpisodeEnd, (st.t + 1, episode_return)))
        header = (self.seq, self.run, st.ep, st.t, self.env.now)
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
