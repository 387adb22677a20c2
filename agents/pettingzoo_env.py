"""The markets as PettingZoo `ParallelEnv`s: outside learners act, the ledger records.

- `AuctionMarketEnv`: each bidder of a society is an agent. Its action is its bid for the
  state up for auction, in credit in [0, 1]; its observation is that state; its reward is
  its auction utility (ledger/payoffs.py), paid in the step where it becomes final: the
  winner's, once the next auction has bought the state it made (or the episode ends).
- `ControlMarketEnv`: each agent of the control variant is an agent. Its action is the
  index of its control; its observation is the state, then the others' previous controls
  (docs/control.md); its reward is its own `Reward` event, in credit.

Every step is written to the env's ledger, as in any run: the env opens a run of the
market's own kernel with the `DRIVEN` policy and steps it (`Core.advance` runs the kernel
until it needs the agents' actions, `Core.submit` hands them over), one episode at a time, in
one thread; the same seed and actions give the same ledger.

Episodes and runs:
- `reset(seed=s)` starts a new run (a new ledger from `ledger_factory`) seeded with s; the
  previous run, if any, is closed first (RunEnd and balances written).
- `reset()` without a seed starts the next episode of the current run (a first reset
  without a seed uses seed 0).
- An episode ends by termination (the task is done) or truncation (its horizon); the agents
  then leave (`agents` is empty) until the next reset.
- `close()` closes the current run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from pettingzoo import ParallelEnv

from ledger.events import ENVIRONMENT, SYSTEM, EventBase, Reward, Transform, Transition
from ledger.payoffs import PayoffTracker, Sample
from ledger.store import Ledger, MemoryLedger
from ledger.transaction import OWN, Transaction
from ledger.units import UNIT
from market.bus import Bus
from market.control import ControlRunConfig, open_control
from market.control_tasks import make_control_task
from market.core import DRIVEN
from market.run import OpenRun, RunConfig, open_auction
from market.society import Society
from market.tasks import make_task

Step = tuple[
    dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict[str, Any]]
]


class _DrivenMarket(ParallelEnv):  # type: ignore[misc]
    """PettingZoo's calls over a driven market run: each `step` submits the agents'
    decision and advances the kernel to the next one, or to the episode's end.

    Subclasses name the agents, their spaces and observations, open the run (`_open`), and
    turn a step's actions into the decision the kernel asked for.
    """

    possible_agents: list[str]

    def __init__(self, ledger_factory: Callable[[], Ledger]) -> None:
        self.agents: list[str] = []
        self.ledger_factory = ledger_factory
        self.ledger: Ledger | None = None
        self.seed = 0
        self._run: OpenRun | None = None
        self._rewards: dict[str, float] = {}
        self._ended_by_task = False
        self._taken = 0
        """Steps taken in the current episode."""

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """A new episode: of a new run if `seed` is given (or no run is open), else of the
        current run."""
        if seed is not None or self._run is None:
            self.close()
            self._start(seed if seed is not None else 0)
        elif self._run.engine.question is not None:
            if self._taken == 0:  # an episode starts with its first step: this one has not
                self.agents = list(self.possible_agents)
                return self._observations(), {a: {} for a in self.agents}
            self.close()  # mid-episode: the run is cut off there, a new one starts on its seed
            self._start(self.seed)
        assert self._run is not None
        self._run.begin(1)
        self._ended_by_task = False
        self._advance()
        self._taken = 0
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> Step:
        """Every agent's action for this step; its observation, own reward, and whether the
        episode ended (terminated: the task is done; truncated: its horizon)."""
        if not self.agents or self._run is None:
            raise RuntimeError("the episode is over: call reset()")
        missing = set(self.agents) - set(actions)
        if missing:
            raise ValueError(f"no action for {', '.join(sorted(missing))}")
        self._rewards = dict.fromkeys(self.possible_agents, 0.0)
        self._taken += 1
        self._run.engine.submit(self._decision(actions)[None, :])
        ended = not self._advance()
        rewards = dict(self._rewards)
        observations = self._observations()
        terminated = dict.fromkeys(self.agents, ended and self._ended_by_task)
        truncated = dict.fromkeys(self.agents, ended and not self._ended_by_task)
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        if ended:
            self.agents = []
        return observations, rewards, terminated, truncated, infos

    def close(self) -> None:
        """Close the current run (RunEnd and balances in its ledger), if one is open. A run
        closed in the middle of an episode is cut off there: the step not taken is not
        written, and neither is a RunEnd, which would have to end the open episode."""
        run, self._run, self.agents = self._run, None, []
        if run is not None and run.engine.question is None:
            run.close()

    def _start(self, seed: int) -> None:
        self.seed = seed
        self.ledger = self.ledger_factory()
        bus = Bus(self.ledger)
        self._subscribe(bus)
        self._run = self._open(self.ledger, bus)

    def _advance(self) -> bool:
        """Run the kernel to its next question (True; heard as the observations) or to the
        end of the episode begun (False)."""
        assert self._run is not None
        engine = self._run.engine
        if not engine.advance():
            return False
        assert engine.question is not None
        self._heard(*engine.question)
        return True

    # --- what a market says ------------------------------------------------------------------

    def _open(self, ledger: Ledger, bus: Bus) -> OpenRun:
        raise NotImplementedError

    def _subscribe(self, bus: Bus) -> None:
        raise NotImplementedError

    def _heard(self, *question: NDArray[Any]) -> None:
        """What the kernel asks about (its policy's arguments, one row): the observations."""
        raise NotImplementedError

    def _decision(self, actions: dict[str, Any]) -> NDArray[Any]:
        raise NotImplementedError

    def _observations(self) -> dict[str, Any]:
        raise NotImplementedError


class ControlMarketEnv(_DrivenMarket):
    """N agents jointly driving one system, each step an audited ledger transaction."""

    metadata: ClassVar[dict[str, Any]] = {"name": "market_control_v0", "render_modes": []}

    def __init__(
        self,
        task: str = "integrator",
        agents: int = 2,
        ledger_factory: Callable[[], Ledger] = MemoryLedger,
    ) -> None:
        super().__init__(ledger_factory)
        self.task = make_control_task(task, agents)
        self.config = ControlRunConfig(task=task, agents=agents, policy="random",
                                       episodes=None, steps=2**62)  # fmt: skip
        self.possible_agents = list(self.config.accounts)
        self._state: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        size = self.task.state_dim + agents - 1
        self._observation_spaces = {
            a: spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float64)
            for a in self.possible_agents
        }
        self._action_spaces = {
            a: spaces.Discrete(len(self.task.controls)) for a in self.possible_agents
        }

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """The state, then the others' previous controls (one space object per agent)."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """The index of the agent's control in the task's control set."""
        return self._action_spaces[agent]

    def _heard(self, *question: NDArray[Any]) -> None:
        """The kernel asks for the controls at state x after the previous controls."""
        x, previous = question
        self._state = (x[0].copy(), previous[0].copy())

    def _open(self, ledger: Ledger, bus: Bus) -> OpenRun:
        config = self.config.model_copy(update={"seed": self.seed})
        return open_control(config, ledger, DRIVEN, bus=bus)

    def _subscribe(self, bus: Bus) -> None:
        for account in self.possible_agents:
            bus.subscribe(account, self._on_own_event)
        bus.subscribe(SYSTEM, self._on_public_event)

    def _decision(self, actions: dict[str, Any]) -> NDArray[Any]:
        return np.array([int(actions[a]) for a in self.possible_agents], dtype=np.int64)

    def _on_own_event(self, e: EventBase) -> None:
        if isinstance(e, Reward):
            own = e.dst if e.src == ENVIRONMENT else e.src
            sign = 1.0 if e.src == ENVIRONMENT else -1.0
            self._rewards[own] += sign * e.amount / UNIT

    def _on_public_event(self, e: EventBase) -> None:
        """After a step, every agent sees the next state and the controls just applied."""
        if isinstance(e, Transition):
            self._state = (np.asarray(e.next_x), np.asarray(e.controls))

    def _observations(self) -> dict[str, NDArray[np.float64]]:
        assert self._state is not None
        x, previous = self._state
        return {
            a: np.concatenate([x, np.delete(previous, i)])
            for i, a in enumerate(self.possible_agents)
        }


class AuctionMarketEnv(_DrivenMarket):
    """A society's bidders, each an agent bidding for the state up for auction."""

    metadata: ClassVar[dict[str, Any]] = {"name": "market_auction_v0", "render_modes": []}

    def __init__(
        self,
        task: str = "chain",
        mechanism: str = "ccv",
        cloned: bool = True,
        gamma: float = 0.99,
        ledger_factory: Callable[[], Ledger] = MemoryLedger,
    ) -> None:
        super().__init__(ledger_factory)
        self.task = make_task(task)
        self.society = Society.of(self.task, cloned)
        self.config = RunConfig(task=task, mechanism=mechanism, cloned=cloned, gamma=gamma,
                                episodes=None, steps=2**62, concurrency=1)  # fmt: skip
        self.possible_agents = list(self.society.accounts)
        self._state = self.task.start
        self._observation_spaces = {
            a: spaces.Discrete(self.task.n_states) for a in self.possible_agents
        }
        self._action_spaces = {
            a: spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float64) for a in self.possible_agents
        }

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """The state up for auction."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """The bid, in credit, in [0, 1]."""
        return self._action_spaces[agent]

    def _heard(self, *question: NDArray[Any]) -> None:
        """The kernel asks for the bids for a state."""
        (states,) = question
        self._state = int(states[0])

    def _open(self, ledger: Ledger, bus: Bus) -> OpenRun:
        config = self.config.model_copy(update={"seed": self.seed})
        return open_auction(config, ledger, DRIVEN, bus=bus, kernel="episodes")

    def _subscribe(self, bus: Bus) -> None:
        tracker = PayoffTracker(self.config.gamma, self._on_samples)
        bus.subscribe_all(tracker.apply)
        bus.subscribe_all(self._on_transaction)

    def _decision(self, actions: dict[str, Any]) -> NDArray[Any]:
        bids = [float(np.asarray(actions[a]).reshape(-1)[0]) for a in self.possible_agents]
        return np.clip(np.array(bids, dtype=np.float64), 0.0, 1.0)

    def _on_samples(self, samples: list[Sample]) -> None:
        for s in samples:
            self._rewards[s.account] = self._rewards.get(s.account, 0.0) + float(s.utility) / UNIT

    def _on_transaction(self, tx: Transaction) -> None:
        """Follow the state sold in each auction, and whether the task ended the episode."""
        for model, values in tx.body:
            if model is Transform:
                move = dict(zip(OWN[Transform], values, strict=True))
                self._state = int(move["next_state"])
                self._ended_by_task = bool(move["done"])

    def _observations(self) -> dict[str, int]:
        return dict.fromkeys(self.possible_agents, int(self._state))
