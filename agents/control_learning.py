"""Control agents that act for the kernel and learn only from what the bus shows them.

Each agent subscribes to its own account (its orders, its rewards) and to `system` (the
public transitions: x_k, the joint controls u_k once step k is settled, x_{k+1}), and
receives each as columns: the rows of every committed batch addressed to it. From these
alone the society assembles every agent's experience (x_k, u_{k-1}, its action, its
reward, x_{k+1}) and hands a whole instant's worth, across the concurrent episodes, to the
N stacked Q-learners of `agents/dqn_control.py`, which then take one gradient step per
`steps_per_update` env steps (the remainder carries over to the next instant), an instant's
steps in one `update` call. No side
channel: rewards are read back from the `Reward` events (in units), actions from the
agent's own `Order` events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agents.dqn_control import ControlDQN
from agents.settings import ControlDQNConfig
from ledger.batch import CODE, EventBatch, concat
from ledger.events import SYSTEM, Order, Reward, RunEnd, Transition
from ledger.transaction import Transaction
from ledger.units import UNIT
from market.bus import Bus
from market.control_tasks import ControlTask


class ControlSociety:
    """N Q-learning agents on one control task, fed by the bus."""

    def __init__(
        self,
        task: ControlTask,
        accounts: tuple[str, ...],
        config: ControlDQNConfig,
        seed: int,
        budget: int | None = None,
    ) -> None:
        """`budget`: the run's env steps, which the exploration schedule is a fraction of."""
        self.task, self.accounts, self.config = task, accounts, config
        self.agent = ControlDQN(task, config, seed, features=task.features, budget=budget)
        self._owed = 0
        """Env steps observed and not yet paid for with gradient steps."""
        self._own: list[list[EventBatch]] = [[] for _ in accounts]
        self._public: list[EventBatch] = []
        self._previous: dict[int, NDArray[np.float64]] = {}
        self.metrics: list[dict[str, float]] = []
        self.on_update: Callable[[dict[str, float]], None] | None = None
        """Called with the metrics of each step's updates (TensorBoard, `--tensorboard`)."""

    def attach(self, bus: Bus) -> None:
        """Learn from what each agent's account and the system's account receive."""
        for i, account in enumerate(self.accounts):
            bus.subscribe(account, batches=self._own[i].append)
        bus.subscribe(SYSTEM, batches=self._public.append)
        bus.subscribe_all(self._on_transaction, batches=self._on_batch)

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Every agent's action for a batch of episodes (one batched forward pass), after
        learning from the instant that just finished."""
        self._learn()
        return self.agent.act(x, previous, self.agent.epsilon)

    def greedy(self) -> Greedy:
        """The agents' current greedy policy, which neither explores nor learns."""
        return Greedy(self.agent)

    def _on_transaction(self, tx: Transaction) -> None:
        """At a run's end, learn from its last instant (no further `act` call comes)."""
        if any(m is RunEnd for m, _ in tx.body):
            self._learn()

    def _on_batch(self, batch: EventBatch) -> None:
        """Nothing: a batch holds steps, which reach the agents through their accounts."""

    def _collect(self) -> tuple[NDArray[Any], ...] | None:
        """The delivered steps as arrays (rows in ledger order), or None if there are none:
        x_k, u_{k-1}, every agent's action, every agent's reward, x_{k+1}.

        Each agent's action and reward come from the rows addressed to it, matched to the
        public transition by their transaction.
        """
        public = concat(self._public) if self._public else None
        own = [concat(parts) if parts else None for parts in self._own]
        self._public.clear()
        for parts in self._own:
            parts.clear()
        if public is None:
            return None
        moves = public.rows(public.kind == CODE[Transition])
        if not len(moves):
            return None
        tx, m, n = moves.columns["tx"], len(moves), len(self.accounts)
        actions = np.full((m, n), -1, dtype=np.int64)
        rewards = np.zeros((m, n))
        for i, rows in enumerate(own):
            if rows is None:
                raise RuntimeError(f"{self.accounts[i]} received no order for a transition")
            orders, paid = rows.kind == CODE[Order], rows.kind == CODE[Reward]
            # One order and one reward of each agent per step, in the transitions' order.
            _same_steps(tx, rows.columns["tx"][orders], rows.columns["tx"][paid])
            actions[:, i] = rows.columns["action"][orders]
            mine = rows.string_codes([self.accounts[i]])[rows.columns["dst"][paid]]
            amount = rows.columns["amount"][paid] / UNIT
            rewards[:, i] = np.where(mine, amount, -amount)
        controls = moves.vectors["controls"]
        previous = np.zeros((m, n))
        for j, (episode, step, done) in enumerate(
            zip(*(moves.columns[c].tolist() for c in ("episode", "step", "done")), strict=True)
        ):
            if step > 0:
                previous[j] = self._previous.pop(episode)
            if not done:
                self._previous[episode] = controls[j]
        return moves.vectors["x"], previous, actions, rewards, moves.vectors["next_x"]

    def _learn(self) -> None:
        """Observe every step delivered since the last call as one instant, then update.

        (The bus delivers a batch to whole-transaction subscribers and account subscribers
        after the ledger took it, so steps are collected here, at the next `act`.)
        """
        steps = self._collect()
        if steps is None:
            return
        states, before, actions, rewards, after = steps
        self.agent.observe(states, before, actions, rewards, after)
        updates, self._owed = divmod(self._owed + len(states), self.config.steps_per_update)
        metrics = self.agent.update(updates) if updates else {}
        if metrics:
            self.metrics.append(metrics)
            if self.on_update is not None:
                self.on_update(metrics)


class Greedy:
    """Every agent's greedy control from its current Q-net (for evaluation runs)."""

    def __init__(self, agent: ControlDQN) -> None:
        self.agent = agent

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Every agent's greedy action for a batch of episodes."""
        return self.agent.act(x, previous, 0.0)


def _same_steps(steps: NDArray[np.int64], *others: NDArray[np.int64]) -> None:
    """Check that an agent's orders and rewards belong to the transitions' steps, in order."""
    if not all(np.array_equal(steps, o) for o in others):
        raise RuntimeError("an agent's orders or rewards do not match the public transitions")
