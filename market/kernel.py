"""The SimPy kernel: each running episode is a process that holds one auction per step.

One step of an episode, as one atomic transaction on the bus:
  Bid (every bidder) -> Allocate (argmax, lowest id on ties) -> Pay (+ Mint)
  -> Transform (the winner's primitive) -> Reward; then SimPy time advances by the
transformation's duration. `concurrency` episodes run at once in one environment; the
kernel's single sequence counter totally orders their events.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import simpy

from ledger.events import (
    AUCTIONEER, ENVIRONMENT, Allocate, Bid, EpisodeEnd, EpisodeStart, EventBase, Mint, Pay,
    Reward, Transform,
)  # fmt: skip
from ledger.units import UNIT, to_units
from market.bus import Bus
from market.mechanisms import Mechanism, Settlement, settle
from market.society import Policy, Society
from market.tasks import Outcome, Task


@dataclass(frozen=True)
class EpisodeResult:
    """What one finished episode reports to a progress display."""

    episode: int
    steps: int
    episode_return: int


class Kernel:
    """Runs auction episodes of one task, society and mechanism into a bus."""

    def __init__(
        self,
        *,
        bus: Bus,
        run: str,
        task: Task,
        society: Society,
        mechanism: Mechanism,
        policy: Policy,
        gamma: float,
        first_seq: int,
        first_episode: int = 0,
    ) -> None:
        self.bus, self.run, self.task, self.society = bus, run, task, society
        self.mechanism, self.policy, self.gamma = mechanism, policy, gamma
        self.env = simpy.Environment()
        self.seq = first_seq
        self.next_episode = first_episode
        self._accounts = society.accounts
        self._primitive_of = society.primitive_of

    def run_episodes(
        self,
        episodes: int,
        concurrency: int = 1,
        on_episode: Callable[[EpisodeResult], None] | None = None,
    ) -> None:
        """Run `episodes` episodes, `concurrency` of them at a time."""
        last = self.next_episode + episodes
        for _ in range(min(concurrency, episodes)):
            self.env.process(self._worker(last, on_episode))
        self.env.run()

    def _worker(
        self, last: int, on_episode: Callable[[EpisodeResult], None] | None
    ) -> Generator[simpy.Event, None, None]:
        while self.next_episode < last:
            ep = self.next_episode
            self.next_episode += 1
            result = yield from self._episode(ep)
            if on_episode is not None:
                on_episode(result)

    def _episode(self, ep: int) -> Generator[simpy.Event, None, EpisodeResult]:
        task, state, seller, total = self.task, self.task.start, ENVIRONMENT, 0
        for t in range(task.horizon):
            drawn = self.policy.bids(np.array([state], dtype=np.int64))[0]
            bids = [int(b) for b in np.rint(np.clip(drawn, 0.0, 1.0) * UNIT)]
            s = settle(self.mechanism, bids, first_sale=t == 0)
            out = task.step(state, self._primitive_of[s.winner])
            reward = to_units(out.reward)
            total += reward
            step = _Step(ep, t, state, bids, seller, s, out, reward)
            last = out.done or t == task.horizon - 1
            self.bus.publish(self._step_events(step, episode_return=total if last else None))
            yield self.env.timeout(out.duration)
            state, seller = out.next_state, self._accounts[s.winner]
            if last:
                return EpisodeResult(ep, t + 1, total)
        return EpisodeResult(ep, 0, 0)

    def _step_events(self, st: _Step, episode_return: int | None) -> list[EventBase]:
        """The events of one auction step, numbered from the kernel's sequence counter."""
        seq, accounts, prims = self.seq, self._accounts, self._primitive_of
        head = {"tx": seq, "run": self.run, "episode": st.ep, "step": st.t, "time": self.env.now}
        w, winner, out = st.settlement.winner, accounts[st.settlement.winner], st.outcome
        tx: list[EventBase] = []
        if st.t == 0:
            tx.append(
                EpisodeStart(
                    seq=seq, **head, task=self.task.name, mechanism=self.mechanism.value,
                    cloned=self.society.cloned, gamma=self.gamma, state=st.state,
                )  # fmt: skip
            )
        for i, b in enumerate(st.bids):
            tx.append(
                Bid(seq=seq + len(tx), **head, account=accounts[i], primitive=prims[i],
                    state=st.state, amount=b)  # fmt: skip
            )
        tx.append(
            Allocate(seq=seq + len(tx), **head, account=winner, primitive=prims[w],
                     state=st.state, amount=st.bids[w])  # fmt: skip
        )
        if st.settlement.price is not None:
            tx.append(
                Pay(seq=seq + len(tx), **head, src=winner, dst=st.seller,
                    amount=st.settlement.price)  # fmt: skip
            )
        if st.settlement.mint:
            tx.append(
                Mint(seq=seq + len(tx), **head, src=AUCTIONEER, dst=st.seller,
                     amount=st.settlement.mint)  # fmt: skip
            )
        tx.append(
            Transform(seq=seq + len(tx), **head, account=winner, primitive=prims[w],
                      state=st.state, next_state=out.next_state, duration=out.duration,
                      done=out.done)  # fmt: skip
        )
        src, dst = (ENVIRONMENT, winner) if st.reward >= 0 else (winner, ENVIRONMENT)
        tx.append(Reward(seq=seq + len(tx), **head, src=src, dst=dst, amount=abs(st.reward)))
        if episode_return is not None:
            tx.append(
                EpisodeEnd(seq=seq + len(tx), **head, steps=st.t + 1,
                           episode_return=episode_return)  # fmt: skip
            )
        self.seq = seq + len(tx)
        return tx


@dataclass(frozen=True, slots=True)
class _Step:
    """What one auction step decided, before it becomes events."""

    ep: int
    t: int
    state: int
    bids: list[int]
    seller: str
    settlement: Settlement
    outcome: Outcome
    reward: int
