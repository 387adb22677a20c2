"""Control agents that act for the kernel and learn only from what the bus shows them.

Each agent subscribes to its own account (its orders, its rewards) and to `system` (the
public transitions: x_k, the joint controls u_k once step k is settled, x_{k+1}). From
these alone the society assembles every agent's experience (x_k, u_{k-1}, its action, its
reward, x_{k+1}) and hands a whole instant's worth, across the concurrent episodes, to the
N stacked Q-learners of `agents/dqn_control.py`, which then take `updates_per_step`
gradient steps. No side channel: rewards are read back from the `Reward` events (in units),
actions from the agent's own `Order` events.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from agents.dqn_control import ControlDQN, ControlDQNConfig
from ledger.events import SYSTEM, EventBase, Order, Reward, RunEnd, Transition
from ledger.transaction import Transaction
from ledger.units import UNIT
from market.bus import Bus
from market.control_tasks import ControlTask


class _Step:
    """One step of one episode, filled in as its events arrive."""

    __slots__ = ("actions", "rewards", "transition")

    def __init__(self, n: int) -> None:
        self.actions = np.full(n, -1, dtype=np.int64)
        self.rewards = np.zeros(n)
        self.transition: Transition | None = None


class ControlSociety:
    """N Q-learning agents on one control task, fed by the bus."""

    def __init__(
        self,
        task: ControlTask,
        accounts: tuple[str, ...],
        config: ControlDQNConfig,
        seed: int,
        updates_per_step: int = 1,
    ) -> None:
        self.task, self.accounts, self.config = task, accounts, config
        self.agent = ControlDQN(task, config, seed)
        self.updates_per_step = updates_per_step
        self._index = {a: i for i, a in enumerate(accounts)}
        self._steps: dict[tuple[int, int], _Step] = {}
        self._previous: dict[int, NDArray[np.float64]] = {}
        self.metrics: list[dict[str, float]] = []

    def attach(self, bus: Bus) -> None:
        """Learn from what each agent's account and the system's account receive."""
        for account in self.accounts:
            bus.subscribe(account, self._on_own_event)
        bus.subscribe(SYSTEM, self._on_public_event)
        bus.subscribe_all(self._on_transaction)

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Every agent's action for a batch of episodes (one batched forward pass), after
        learning from the instant that just finished."""
        self._learn()
        return self.agent.act(x, previous, self.agent.epsilon)

    def _step(self, episode: int, step: int) -> _Step:
        key = (episode, step)
        if key not in self._steps:
            self._steps[key] = _Step(len(self.accounts))
        return self._steps[key]

    def _on_own_event(self, e: EventBase) -> None:
        if isinstance(e, Order):
            self._step(e.episode, e.step).actions[e.primitive] = e.action
        elif isinstance(e, Reward):
            own = e.dst if e.dst in self._index else e.src
            sign = 1 if e.dst == own else -1
            self._step(e.episode, e.step).rewards[self._index[own]] = sign * e.amount / UNIT

    def _on_public_event(self, e: EventBase) -> None:
        if isinstance(e, Transition):
            self._step(e.episode, e.step).transition = e

    def _on_transaction(self, tx: Transaction) -> None:
        """At a run's end, learn from its last instant (no further `act` call comes)."""
        if any(m is RunEnd for m, _ in tx.body):
            self._learn()

    def _learn(self) -> None:
        """Observe every step whose events have all arrived as one instant, then update.

        (The bus hands a transaction to whole-transaction subscribers before it delivers
        its events by account, so steps are collected here, at the next `act`.)
        """
        done = [k for k, s in self._steps.items() if s.transition is not None]
        if not done:
            return
        rows = []
        for key in done:
            filled = self._steps.pop(key)
            move = filled.transition
            assert move is not None
            episode = key[0]
            previous = self._previous.pop(episode, np.zeros(len(self.accounts)))
            if not move.done:
                self._previous[episode] = np.asarray(move.controls)
            rows.append(
                (
                    np.asarray(move.x),
                    previous,
                    filled.actions,
                    filled.rewards,
                    np.asarray(move.next_x),
                )
            )
        states, before, actions, rewards, after = (np.stack(c) for c in zip(*rows, strict=True))
        self.agent.observe(states, before, actions, rewards, after)
        metrics: dict[str, float] = {}
        for _ in range(self.updates_per_step):
            metrics = self.agent.update() or metrics
        if metrics:
            self.metrics.append(metrics)
