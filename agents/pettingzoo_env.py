"""The markets as PettingZoo `ParallelEnv`s: outside learners act, the ledger records.

- `AuctionMarketEnv`: each bidder of a society is an agent. Its action is its bid for the
  state up for auction, in credit in [0, 1]; its observation is that state; its reward is
  its auction utility (ledger/payoffs.py), paid in the step where it becomes final: the
  winner's, once the next auction has bought the state it made (or the episode ends).
- `ControlMarketEnv`: each agent of the control variant is an agent. Its action is the
  index of its control; its observation is the state, then the others' previous controls
  (docs/control.md); its reward is its own `Reward` event, in credit.

Every step is written to the env's ledger, as in any run: the env runs the market's own
`simulate` in a worker thread and hands control back and forth with it, so exactly one side
runs at a time and the same seed and actions give the same ledger.

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

import queue
import threading
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
from market.control import ControlRunConfig, simulate_control
from market.control_tasks import make_control_task
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

_STOP = "stop"
_GO = "go"
Step = tuple[
    dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict[str, Any]]
]


class _Stopped(Exception):
    """Raised in the run's thread when the env is closed in the middle of a decision."""


class _DrivenMarket(ParallelEnv):  # type: ignore[misc]
    """The handshake between PettingZoo's calls and a market run in a worker thread.

    Subclasses name the agents, their spaces and observations, start the run (`_simulate`),
    and turn a step's actions into what the kernel asked for.
    """

    possible_agents: list[str]

    def __init__(self, ledger_factory: Callable[[], Ledger]) -> None:
        self.agents: list[str] = []
        self.ledger_factory = ledger_factory
        self.ledger: Ledger | None = None
        self.seed = 0
        self._thread: threading.Thread | None = None
        self._to_run: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._from_run: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._rewards: dict[str, float] = {}
        self._at_boundary = False
        self._started = False
        self._ended_by_task = False
        self._taken = 0
        """Steps taken in the current episode."""
        self._error: BaseException | None = None

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """A new episode: of a new run if `seed` is given (or no run is open), else of the
        current run."""
        if seed is not None or self._thread is None:
            self.close()
            self._start(seed if seed is not None else 0)
        elif self._at_boundary:
            self._to_run.put(_GO)
        elif self._taken == 0:  # an episode starts with its first step: this one has not
            self.agents = list(self.possible_agents)
            return self._observations(), {a: {} for a in self.agents}
        else:  # mid-episode: the run is cut off there, and a new one starts on its seed
            self.close()
            self._start(self.seed)
        self._await()
        self._taken = 0
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> Step:
        """Every agent's action for this step; its observation, own reward, and whether the
        episode ended (terminated: the task is done; truncated: its horizon)."""
        if not self.agents:
            raise RuntimeError("the episode is over: call reset()")
        missing = set(self.agents) - set(actions)
        if missing:
            raise ValueError(f"no action for {', '.join(sorted(missing))}")
        self._rewards = dict.fromkeys(self.possible_agents, 0.0)
        self._taken += 1
        self._to_run.put(self._decision(actions))
        ended = self._await()
        rewards = dict(self._rewards)
        observations = self._observations()
        terminated = dict.fromkeys(self.agents, ended and self._ended_by_task)
        truncated = dict.fromkeys(self.agents, ended and not self._ended_by_task)
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        if ended:
            self.agents = []
        return observations, rewards, terminated, truncated, infos

    def close(self) -> None:
        """Close the current run (RunEnd and balances in its ledger), if one is open."""
        if self._thread is None:
            return
        self._to_run.put(_STOP)
        self._thread.join()
        self._thread = None
        self.agents = []
        while not self._from_run.empty():  # the run's last word, already acted on
            self._from_run.get_nowait()
        self._raise_error()

    # --- what a market says ------------------------------------------------------------------

    def _simulate(self, ledger: Ledger, bus: Bus, gate: Callable[[], bool]) -> None:
        raise NotImplementedError

    def _subscribe(self, bus: Bus) -> None:
        raise NotImplementedError

    def _decision(self, actions: dict[str, Any]) -> NDArray[Any]:
        raise NotImplementedError

    def _observations(self) -> dict[str, Any]:
        raise NotImplementedError

    # --- the run's side of the handshake -----------------------------------------------------

    def _start(self, seed: int) -> None:
        self.seed = seed
        self.ledger = self.ledger_factory()
        bus = Bus(self.ledger)
        self._subscribe(bus)
        self._at_boundary, self._started = False, False
        self._thread = threading.Thread(target=self._run, args=(bus,), daemon=True)
        self._thread.start()

    def _run(self, bus: Bus) -> None:
        assert self.ledger is not None
        try:
            self._simulate(self.ledger, bus, self._gate)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the env's side, raised there
            self._error = e
        finally:
            self._from_run.put(None)

    def _gate(self) -> bool:
        """A new episode may start once the env's side says so (a reset)."""
        if self._started:  # not the run's first episode: wait at the boundary
            self._at_boundary = True
            self._from_run.put("boundary")
            if self._to_run.get() == _STOP:
                return False
            self._at_boundary = False
        self._started, self._ended_by_task = True, False
        return True

    def _ask(self) -> NDArray[Any]:
        """In the run's thread: tell the env a decision is due, and wait for it."""
        self._from_run.put("decide")
        got = self._to_run.get()
        if isinstance(got, str):
            raise _Stopped
        out: NDArray[Any] = got
        return out

    def _await(self) -> bool:
        """Wait until the run asks for the next decision (False) or ends an episode (True)."""
        what = self._from_run.get()
        if what is None:
            self._thread = None
            self._raise_error()
            raise RuntimeError("the run ended")
        return bool(what == "boundary")

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """The kernel asks for the controls: hand its state over and wait for the actions."""
        self._state = (x[0].copy(), previous[0].copy())
        return self._ask()[None, :]

    def _simulate(self, ledger: Ledger, bus: Bus, gate: Callable[[], bool]) -> None:
        config = self.config.model_copy(update={"seed": self.seed})
        simulate_control(config, ledger, self, bus=bus, gate=gate)

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

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """The kernel asks for the bids for `states` (one episode: one state)."""
        self._state = int(states[0])
        return self._ask()[None, :]

    def _simulate(self, ledger: Ledger, bus: Bus, gate: Callable[[], bool]) -> None:
        config = self.config.model_copy(update={"seed": self.seed})
        simulate(config, ledger, self, bus=bus, kernel="episodes", gate=gate)

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
