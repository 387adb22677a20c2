"""The control variant: N agents jointly drive one system, on the same kernel, bus and ledger.

At every step k of an episode, one transaction (an instant's transactions, one per running
episode, are published as one columnar batch):
  Order (every agent's control u_i, the a-th of its control set) -> Transition (the system
  moves x_k -> x_{k+1} = f(x_k, u_k), addressed to `system`, public) -> Reward (each agent's
  own g_i(x_k, u_k), from or to the environment).
The first step of an episode also opens it (EpisodeStart), the last closes it (EpisodeEnd,
with the team's return: the sum of every agent's rewards, in units).

No credit is created: rewards move between the environment and the agents, like the auction
variant's. What an agent may learn from is what the bus delivers to its account (its order,
its reward) and to `system` (the state and, after the step, everyone's controls): never
another agent's reward or current control (docs/control.md).

Episodes run `concurrency` at a time in lockstep (every step takes one unit of SimPy time),
with one policy call per instant for all of them: all agents' Q-values for a step come
from one batched call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from ledger.batch import CODE, EventBatch
from ledger.events import (
    CONTROL,
    ENVIRONMENT,
    SYSTEM,
    EpisodeEnd,
    EpisodeStart,
    EventBase,
    Order,
    Reward,
    Transition,
)
from ledger.store import Ledger
from ledger.units import to_units_array
from market.bus import Bus
from market.control_tasks import CONTROL_TASKS, ControlTask, make_control_task
from market.core import EpisodeResult, Start
from market.recorded import Recorded
from market.run import Engine, OpenRun, RunSummary
from market.slots import SlotKernel, Stepped
from market.tasks import gym_id

METHODS = ("independent", "ter", "ier", "iql", "full")
"""The learning methods of the control variant (agents/dqn_control.py)."""
POLICIES = ("zero", "random", "dqn")
LEARNING_CONCURRENCY = 32
"""Episodes at once in a learning run unless told otherwise: one batched forward pass and
one columnar batch serve them all (the learner's update rate is per env step, not per
instant, so this changes speed, not the amount of training per env step)."""
"""Who chooses the controls: fixed (every control 0; uniformly random) or learning."""


class ControlPolicy(Protocol):
    """Chooses every agent's control for a batch of episodes in one call."""

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Action indices (B, N) for states `x` (B, d) and the previous joint controls
        `previous` (B, N); agent i's choice may depend only on x and the others' previous
        controls."""
        ...


class ControlRunConfig(Recorded):
    """Everything that determines a control run's ledger."""

    added = ("controls",)

    variant: Literal["control"] = "control"
    task: str = "pendulum"
    agents: int = Field(default=2, ge=1, le=16)
    policy: str = "zero"
    method: str | None = None
    """The learning method when `policy` is dqn (one of METHODS)."""
    episodes: int | None = Field(default=100, ge=1)
    steps: int | None = Field(default=None, ge=1)
    """Env steps after which no new episode starts; None: run `episodes`."""
    learner: dict[str, Any] | None = None
    """The learner's own configuration (recorded, hashed)."""
    seed: int = Field(default=0, ge=0)
    gamma: float = Field(default=0.99, gt=0.0, lt=1.0)
    """Every agent's discount (methods.md's gamma_i, one value for all)."""
    concurrency: int = Field(default=1, ge=1)
    controls: int | None = Field(default=None, ge=3, le=65)
    """Each agent's number of controls over its share of a Gymnasium plant's action (odd, so
    0 is among them); None: `market.gym_control.N_CONTROLS`."""

    @model_validator(mode="after")
    def _valid(self) -> ControlRunConfig:
        if self.episodes is None and self.steps is None:
            raise ValueError("give a number of episodes or of steps")
        if self.task not in CONTROL_TASKS and gym_id(self.task) is None:
            choices = ", ".join(CONTROL_TASKS)
            raise ValueError(
                f"unknown control task {self.task!r}; choose one of: {choices}, or gym:ID"
            )
        if self.policy not in POLICIES:
            raise ValueError(
                f"unknown control policy {self.policy!r}; choose one of: {', '.join(POLICIES)}"
            )
        if (self.policy == "dqn") != (self.method is not None):
            raise ValueError("a learning run (policy dqn) names a method, a fixed one does not")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.controls is not None and gym_id(self.task) is None:
            raise ValueError(
                f"--controls is for Gymnasium plants (gym:ID); {self.task} has its own"
            )
        if self.controls is not None and self.controls % 2 == 0:
            raise ValueError(f"--controls must be odd, so that 0 is a control; got {self.controls}")
        return self

    @property
    def run_id(self) -> str:
        """A readable id that is a function of the configuration alone."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{self.task}-control-n{self.agents}-s{self.seed}-{digest}"

    @property
    def accounts(self) -> tuple[str, ...]:
        """Every agent's account, in agent order."""
        return tuple(f"agent{i}" for i in range(self.agents))


def control_task_of(config: ControlRunConfig) -> ControlTask:
    """The control task `config` names, for its agents and controls."""
    return make_control_task(config.task, config.agents, config.controls)


def reset_rng(seed: int) -> np.random.Generator:
    """The generator of initial states, derived from the run's one seed (its second spawn;
    the first is the learner's)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])


class ControlKernel(SlotKernel):
    """Runs control episodes, `concurrency` at a time in lockstep, into a bus."""

    def __init__(
        self,
        start: Start,
        *,
        task: ControlTask,
        accounts: tuple[str, ...],
        policy: ControlPolicy,
        rng: np.random.Generator,
        gamma: float,
    ) -> None:
        super().__init__(start, policy)
        self.task, self.accounts = task, accounts
        self.policy, self.rng, self._gamma = policy, rng, gamma
        self._codes = (_RUN_CODE, _TASK_CODE, _MECHANISM_CODE)
        n = len(accounts)
        self._strings = (self.run, task.name, CONTROL, ENVIRONMENT, SYSTEM, *accounts)
        self._agents = np.arange(5, 5 + n, dtype=np.int64)
        kinds: list[type[EventBase]] = [
            EpisodeStart, *[Order] * n, Transition, *[Reward] * n, EpisodeEnd
        ]  # fmt: skip
        self._kinds = np.array([CODE[m] for m in kinds], dtype=np.int8)

    def _schedule(self, slots: int) -> None:
        """Each slot's plant state and previous joint controls, then the scheduler's own."""
        self._x = np.zeros((slots, self.task.state_dim))
        self._previous = np.zeros((slots, self.task.n_agents))
        super()._schedule(slots)

    def _begin(self, slots: NDArray[np.int64]) -> None:
        """Each starting slot's plant is reset (one draw per slot, in slot order), with no
        previous controls."""
        for i in slots.tolist():
            self._x[i] = self.task.reset(self.rng, 1)[0]
        self._previous[slots] = 0.0

    def _question(self, slots: NDArray[np.int64]) -> tuple[NDArray[np.float64], ...]:
        """The plant states and the previous joint controls."""
        return self._x[slots], self._previous[slots]

    def _decide(self, *question: Any) -> NDArray[np.int64]:
        """Every agent's control index for each plant state."""
        return self.policy.act(*question)

    def _step(self, idx: NDArray[np.int64], now: float, answer: Any) -> Stepped:
        """One step of every due plant on the controls `answer`, one unit of time long."""
        task, x, t = self.task, self._x[idx], self._t[idx]
        actions = np.asarray(answer, dtype=np.int64)
        u = task.controls[actions]
        nxt, rewards = task.f(x, u), task.g(x, u)
        units = to_units_array(rewards)
        reward = units.sum(axis=1)
        ends = t == task.horizon - 1
        total = self._total[idx] + reward
        batch = self._instant(idx, now, x, actions, u, nxt, units, total, ends)
        self._x[idx], self._previous[idx] = nxt, u
        return Stepped(batch, reward, np.ones(len(idx)), ends)

    def _instant(
        self,
        idx: NDArray[np.int64],
        now: float,
        x: NDArray[np.float64],
        actions: NDArray[np.int64],
        u: NDArray[np.float64],
        nxt: NDArray[np.float64],
        units: NDArray[np.int64],
        total: NDArray[np.int64],
        ends: NDArray[np.bool_],
    ) -> EventBatch:
        """One transaction per due slot `idx` (rows of the arrays, in order) as one batch:
        its `EpisodeStart` at t = 0, N orders, the transition, N rewards, its `EpisodeEnd` at
        the last step; numbered from the kernel's counter."""
        k, n = len(idx), len(self.accounts)
        orders, move, rewards = slice(1, n + 1), n + 1, slice(n + 2, 2 * n + 2)
        g = self._grid(np.ones((k, 2 * n + 3), dtype=bool), self._t[idx], ends)
        agent = np.arange(n)
        account, src, dst, primitive, action, amount = (g.cells() for _ in range(6))
        control = g.cells(np.float64)
        account[:, orders], primitive[:, orders], action[:, orders] = self._agents, agent, actions
        control[:, orders] = u
        account[:, move] = _SYSTEM_CODE
        gives = units >= 0
        src[:, rewards] = np.where(gives, _ENVIRONMENT_CODE, self._agents)
        dst[:, rewards] = np.where(gives, self._agents, _ENVIRONMENT_CODE)
        amount[:, rewards] = np.abs(units)
        return g.batch(
            self._kinds,
            {
                **self._header(g, idx, now, total),
                "account": g.of_cells(account),
                "src": g.of_cells(src),
                "dst": g.of_cells(dst),
                "amount": g.of_cells(amount),
                "primitive": g.of_cells(primitive),
                "action": g.of_cells(action),
                "control": g.of_cells(control),
                "done": g.of_rows(ends),
            },
            self._strings,
            {"x": g.of_rows(x), "controls": g.of_rows(u), "next_x": g.of_rows(nxt)},
        )


_RUN_CODE, _TASK_CODE, _MECHANISM_CODE, _ENVIRONMENT_CODE, _SYSTEM_CODE = range(5)
"""The codes of the fixed strings of a control batch (`ControlKernel._strings`)."""


def simulate_control(
    config: ControlRunConfig,
    ledger: Ledger,
    policy: ControlPolicy,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    bus: Bus | None = None,
) -> RunSummary:
    """Run a control `config` with `policy` into `ledger`: opened (`open_control`), its budget
    run, closed and flushed."""
    run = open_control(config, ledger, policy, on_episode, bus)
    return run.run(config.episodes, config.concurrency, config.steps)


def open_control(
    config: ControlRunConfig,
    ledger: Ledger,
    policy: ControlPolicy,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    bus: Bus | None = None,
) -> OpenRun:
    """Open a control run of `config` with `policy` (or `DRIVEN`: its driver submits the
    controls) in `ledger`, its kernel ready to run episodes."""
    task = control_task_of(config)

    def build(start: Start) -> Engine:
        return ControlKernel(
            start,
            task=task,
            accounts=config.accounts,
            policy=policy,
            rng=reset_rng(config.seed),
            gamma=config.gamma,
        )

    return OpenRun(
        ledger,
        bus if bus is not None else Bus(ledger),
        run_id=config.run_id,
        seed=config.seed,
        config_json=config.model_dump_json(),
        accounts=(ENVIRONMENT, SYSTEM, *config.accounts),
        build=build,
        on_episode=on_episode,
    )
