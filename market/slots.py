"""The slot scheduler under the array kernels: K episode slots stepped as arrays in one SimPy
process.

`SlotKernel` owns what the round kernel (auctions) and the control kernel (a shared plant)
do alike: each slot's status, due time, episode number, steps taken and return so far; the
budget (which slots start another episode, numbered in slot order); the policy's question,
answered by the policy or, in a driven run, by the driver (`Core.submit`); publishing each
instant's batch; and reporting each finished episode when its slot is due again. A variant
supplies four methods:

- `_begin(slots)`: set up the variant's own state of slots that start an episode now;
- `_question(slots)`: what its policy is asked for the due slots (the policy's arguments);
- `_decide(*question)`: the policy's answer;
- `_step(slots, now, answer)`: one step of every due slot on that answer, as a `Stepped`.

At each instant, slots due to start do so first (in slot order), then every running slot
that is due steps, all in one batch. A slot whose episode ended is due again after its last
step's duration, and starts the next episode then, if the budget allows (else it retires).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import numpy as np
import simpy
from numpy.typing import NDArray

from ledger.batch import EventBatch, Grid
from market.core import Budget, Core, EpisodeResult

_IDLE, _RUNNING, _STARTING = 0, 1, 2


class Stepped(NamedTuple):
    """One instant's step of the due slots (arrays in their order)."""

    batch: EventBatch
    """Their transactions, numbered from the kernel's `seq`."""
    reward: NDArray[np.int64]
    """Each slot's reward this step, in units (the team's, for several agents)."""
    duration: NDArray[Any]
    """SimPy time until each slot is due again."""
    last: NDArray[np.bool_]
    """Whether the step ended the slot's episode."""


class SlotKernel(Core):
    """Runs episodes in `concurrency` slots as arrays (see the module docstring)."""

    def _schedule(self, slots: int) -> None:
        """One SimPy process that steps every slot due at each instant."""
        self._status = np.full(slots, _STARTING, dtype=np.int8)
        self._due = np.full(slots, self.env.now, dtype=np.float64)
        self._ep = np.zeros(slots, dtype=np.int64)
        self._t = np.zeros(slots, dtype=np.int64)
        """Steps taken in each slot's episode."""
        self._total = np.zeros(slots, dtype=np.int64)
        """Each slot's episode return so far, in units."""
        self._ended = np.zeros(slots, dtype=bool)
        """Slots whose episode has ended and not yet been reported."""
        self.env.process(self._loop(self._budget, self._on_episode))

    def _loop(
        self, budget: Budget, on_episode: Callable[[EpisodeResult], None] | None
    ) -> Generator[simpy.Event, Any, None]:
        while True:
            now = float(self._due.min())  # a retired slot is never due (`_retire`)
            if now == math.inf:
                return
            if now > self.env.now:
                yield self.env.timeout(now - self.env.now)
            due = np.flatnonzero(self._due == now)
            status = self._status[due]
            starting = due[status == _STARTING]
            if starting.size:
                self._start(starting, budget, on_episode)
                status = self._status[due]
            running = due[status == _RUNNING]
            if running.size:
                question = self._question(running)
                if self.driven:
                    answer = yield from self._asked(*question)
                else:
                    answer = self._decide(*question)
                self._publish(running, now, self._step(running, now, answer))

    def _start(
        self,
        idx: NDArray[np.int64],
        budget: Budget,
        on_episode: Callable[[EpisodeResult], None] | None,
    ) -> None:
        """Slots `idx`, in order, report their finished episode and start the next ones, as
        long as more may start (the rest retire)."""
        if on_episode is not None:
            for i in idx[self._ended[idx]].tolist():
                on_episode(EpisodeResult(int(self._ep[i]), int(self._t[i]), int(self._total[i])))
        self._ended[idx] = False
        may = len(idx) if budget.allows(self.next_episode, self.steps) else 0
        if budget.last is not None:
            may = min(may, max(budget.last - self.next_episode, 0))
        self._retire(idx[may:])
        go = idx[:may]
        self._status[go] = _RUNNING
        self._ep[go] = self.next_episode + np.arange(may)
        self.next_episode += may
        self._t[go], self._total[go] = 0, 0
        if may:
            self._begin(go)

    def _publish(self, idx: NDArray[np.int64], now: float, step: Stepped) -> None:
        """Publish the step's batch and move its slots on: due again after their duration,
        their ended episodes to report."""
        self.seq += len(step.batch)
        self.steps += len(idx)
        self.bus.publish_batch(step.batch)
        self._t[idx] += 1
        self._total[idx] += step.reward
        self._due[idx] = now + step.duration
        if step.last.any():
            ended = idx[step.last]
            self._status[ended] = _STARTING
            self._ended[ended] = True

    def _retire(self, slots: NDArray[np.int64] | int) -> None:
        """`slots` start no other episode: never due again."""
        self._status[slots] = _IDLE
        self._due[slots] = math.inf

    def _grid(
        self, present: NDArray[np.bool_], t: NDArray[np.int64], last: NDArray[np.bool_]
    ) -> Grid:
        """The due slots' transactions laid out on `present` (a row per slot, a column per
        place), opened by an EpisodeStart (the first place) at an episode's first step and
        closed by an EpisodeEnd (the last place) at its last."""
        present[:, 0], present[:, -1] = t == 0, last
        return Grid(present, self.seq)

    def _header(
        self, g: Grid, idx: NDArray[np.int64], now: float, total: NDArray[np.int64]
    ) -> dict[str, NDArray[Any]]:
        """The columns every variant's events fill alike: the transaction's header (run,
        episode, step, time), the episode's opening (task, mechanism, discount: the codes of
        `_codes`, `_gamma`) and its closing (steps, and the return `total` with this step's)."""
        run, task, mechanism = self._codes
        t = self._t[idx]
        return {
            "run": g.constant(run, np.int64),
            "episode": g.of_rows(self._ep[idx]),
            "step": g.of_rows(t),
            "time": g.constant(now, np.float64),
            "task": g.constant(task, np.int64),
            "mechanism": g.constant(mechanism, np.int64),
            "gamma": g.constant(self._gamma),
            "steps": g.of_rows(t + 1),
            "episode_return": g.of_rows(total),
        }

    # --- what a variant supplies ---------------------------------------------------------

    _codes: tuple[int, int, int]
    """The string codes of the run, the task and the mechanism in the variant's batches."""
    _gamma: float
    """The discount its episodes open with."""

    def _begin(self, slots: NDArray[np.int64]) -> None:
        """Set up the variant's state of `slots`, which start an episode now (`_ep` holds
        their numbers)."""
        raise NotImplementedError

    def _question(self, slots: NDArray[np.int64]) -> tuple[Any, ...]:
        """What the policy is asked for the due `slots`: its arguments."""
        raise NotImplementedError

    def _decide(self, *question: Any) -> Any:
        """The policy's answer to `question` (`_step` takes it, or the driver's, as given)."""
        raise NotImplementedError

    def _step(self, slots: NDArray[np.int64], now: float, answer: Any) -> Stepped:
        """One step of every due slot on `answer`, numbered from `seq` (`_t` and `_total`
        still hold the steps and return before it)."""
        raise NotImplementedError
