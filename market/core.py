"""What every kernel holds and does alike: where it starts, its SimPy environment and counters,
the budget of episodes or steps, and the turn-taking with a driver (`Core`)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from numpy.typing import NDArray

from market.bus import Bus


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
