"""The SimPy kernel: each running episode is a process that holds one auction per step.

One step of an episode, as one atomic transaction on the bus:
  Bid (every bidder) -> Allocate (argmax, lowest id on ties) -> Pay (+ Mint)
  -> Transform (the winner's primitive) -> Reward; then SimPy time advances by the
transformation's duration. `concurrency` episodes run at once in one environment; the
kernel's single sequence counter totally orders their events.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import simpy
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
from market.bus import Bus
from market.economy import Economy
from market.mechanisms import Mechanism, Settlement, settle
from market.society import Policy, Society
from market.tasks import Outcome, Task

EXTINCT = "the society went extinct: no living member has credit left to bid"
"""Why an economy's run stops before its budget."""


@dataclass(frozen=True)
class EpisodeResult:
    """What one finished episode reports to a progress display."""

    episode: int
    steps: int
    episode_return: int


@dataclass(frozen=True)
class Budget:
    """When a kernel may start another episode: before episode number `last` and while
    fewer than `limit` steps have been taken (None: no such bound)."""

    last: int | None
    limit: int | None

    @classmethod
    def of(
        cls, episodes: int | None, max_steps: int | None, next_episode: int, steps: int
    ) -> Budget:
        """The budget of `episodes` more episodes or `max_steps` more steps."""
        if episodes is None and max_steps is None:
            raise ValueError("give a number of episodes or of steps")
        last = next_episode + episodes if episodes is not None else None
        return cls(last, steps + max_steps if max_steps is not None else None)

    def allows(self, next_episode: int, steps: int) -> bool:
        """Whether an episode numbered `next_episode` may start after `steps` steps."""
        if self.last is not None and next_episode >= self.last:
            return False
        return self.limit is None or steps < self.limit


@dataclass(frozen=True)
class Start:
    """Where a kernel starts writing: the bus and run, the first sequence number and episode
    number, and SimPy's start time (a continued ledger's, or 0)."""

    bus: Bus
    run: str
    first_seq: int
    first_episode: int = 0
    start_time: float = 0.0


class Driven:
    """The policy of a run stepped from outside (the PettingZoo envs): every decision the
    kernel needs (the bidders' bids for a batch of states, the agents' controls) waits in
    SimPy until the driver submits it (`Core.advance`, `Core.question`, `Core.submit`), so
    driver and kernel take turns in one thread. Asked directly, it refuses."""

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Never called: a driven run's bids come from `Core.submit`."""
        raise RuntimeError("a driven run's decisions come from Core.submit")

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Never called: a driven run's controls come from `Core.submit`."""
        raise RuntimeError("a driven run's decisions come from Core.submit")


DRIVEN = Driven()
"""The policy that makes a run driven from outside."""


class Core:
    """What every kernel holds and does alike: where it starts (`Start`), a SimPy
    environment, the sequence and episode counters, the env steps taken, why the run stopped
    before its budget, and the run itself: a budget of episodes or steps in `concurrency`
    slots (`begin`), then SimPy runs until a driven run's next decision or the end
    (`advance`)."""

    def __init__(self, start: Start, policy: object) -> None:
        self.bus, self.run = start.bus, start.run
        self.driven = policy is DRIVEN
        """Whether decisions come from the driver (`submit`) rather than the policy."""
        self.question: tuple[Any, ...] | None = None
        """What a driven run asks its driver to decide now (the kernel's policy arguments),
        or None."""
        self._answer: simpy.Event | None = None
        self.env = simpy.Environment(initial_time=start.start_time)
        self.seq = start.first_seq
        self.next_episode = start.first_episode
        self.steps = 0
        """Env steps taken so far (auctions, or the plant's steps)."""
        self.stopped: str | None = None
        """Why the run stopped before its budget (None: it did not)."""
        self._budget = Budget(None, None)
        self._concurrency = 1
        self._on_episode: Callable[[EpisodeResult], None] | None = None

    def begin(
        self,
        episodes: int | None,
        concurrency: int = 1,
        on_episode: Callable[[EpisodeResult], None] | None = None,
        max_steps: int | None = None,
    ) -> None:
        """Schedule `episodes` more episodes, `concurrency` at a time; with `max_steps`, start
        no new episode once that many more steps have been taken (those under way finish).
        `advance` runs them."""
        self._budget = Budget.of(episodes, max_steps, self.next_episode, self.steps)
        self._concurrency, self._on_episode = concurrency, on_episode
        self._schedule(concurrency if episodes is None else min(concurrency, episodes))

    def advance(self) -> bool:
        """Run until a decision is due from the driver (True: `question` holds it, `submit`
        answers it) or every scheduled episode is over (False)."""
        with fewer_collections():
            self.env.run()
        return self._answer is not None

    def submit(self, answer: Any) -> None:
        """The driver's answer to `question`, in the policy's form (bids, or control
        indices, one row per episode asked about); `advance` then goes on from it."""
        if self._answer is None:
            raise RuntimeError("no decision is due: advance the run first")
        waiting, self._answer, self.question = self._answer, None, None
        waiting.succeed(answer)

    def _asked(self, *question: Any) -> Generator[simpy.Event, Any, Any]:
        """Wait in SimPy for the driver's answer to `question` (a driven run)."""
        self.question, self._answer = question, self.env.event()
        answer = yield self._answer
        return answer

    def _schedule(self, slots: int) -> None:
        """Start the SimPy processes that run `slots` episodes at a time within the budget."""
        raise NotImplementedError


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
        header = (self.seq, self.run, st.ep, st.t, self.env.now)
        self.seq += len(own)
        return Transaction(header, own)


@contextmanager
def fewer_collections(gen0: int = 50_000) -> Iterator[None]:
    """Run with a higher generation-0 threshold for Python's cycle collector.

    Speed: the loop allocates millions of short-lived tuples; at the default threshold
    (700) collections cost about a quarter of the run's time (benchmarks/engine.py).
    """
    saved = gc.get_threshold()
    gc.set_threshold(gen0, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


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
