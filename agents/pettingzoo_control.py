"""The control variant as a PettingZoo `ParallelEnv`: outside learners choose the controls.

Each agent of the control market is a PettingZoo agent. Its action is the index of its
control in the shared control set; its observation is what the variant lets it see: the
state, then the others' previous controls (docs/control.md); its reward is its own `Reward`
event, read back from the bus, in credit. Every step is written to the ledger, as in any
control run: this env runs `market.control.simulate_control` itself, in a worker thread,
and hands control back and forth with it, so exactly one side runs at a time and the same
seed and actions give the same ledger.

Episodes and runs:
- `reset(seed=s)` starts a new run (a new ledger, or the next ledger from `ledger_factory`)
  whose initial states come from seed s; the previous run, if any, is closed first
  (RunEnd and balances written).
- `reset()` without a seed starts the next episode of the current run (a first reset
  without a seed uses seed 0).
- An episode ends by truncation at the task's horizon; the agents then leave (`agents` is
  empty) until the next reset.
- `close()` closes the current run.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray
from pettingzoo import ParallelEnv

from ledger.events import ENVIRONMENT, SYSTEM, EventBase, Reward, Transition
from ledger.store import Ledger, MemoryLedger
from ledger.units import UNIT
from market.bus import Bus
from market.control import ControlRunConfig, simulate_control
from market.control_tasks import make_control_task

_STOP = "stop"
_GO = "go"


class _Stopped(Exception):
    """Raised in the run's thread when the env is closed in the middle of a decision."""


class ControlMarketEnv(ParallelEnv):  # type: ignore[misc]
    """N agents jointly driving one system, each step an audited ledger transaction."""

    metadata: ClassVar[dict[str, Any]] = {"name": "market_control_v0", "render_modes": []}

    def __init__(
        self,
        task: str = "integrator",
        agents: int = 2,
        ledger_factory: Callable[[], Ledger] = MemoryLedger,
    ) -> None:
        self.task = make_control_task(task, agents)
        self.config = ControlRunConfig(task=task, agents=agents, policy="random",
                                       episodes=None, steps=2**62)  # fmt: skip
        self.possible_agents = list(self.config.accounts)
        self.agents: list[str] = []
        self.ledger_factory = ledger_factory
        self.ledger: Ledger | None = None
        self._thread: threading.Thread | None = None
        self._to_run: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._from_run: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._rewards = np.zeros(agents)
        self._state: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        self._at_boundary = False
        self._taken = 0
        """Steps taken in the current episode."""
        self._error: BaseException | None = None
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

    # --- the PettingZoo API ------------------------------------------------------------------

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[np.float64]], dict[str, dict[str, Any]]]:
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
            self._start(self.config.seed)
        self._await_decision()
        self._taken = 0
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[
        dict[str, NDArray[np.float64]],
        dict[str, float],
        dict[str, bool],
        dict[str, bool],
        dict[str, dict[str, Any]],
    ]:  # fmt: skip
        """Every agent's control for this step; its observation, own reward, and whether the
        episode is cut off (at the horizon)."""
        if not self.agents:
            raise RuntimeError("the episode is over: call reset()")
        missing = set(self.agents) - set(actions)
        if missing:
            raise ValueError(f"no action for {', '.join(sorted(missing))}")
        chosen = np.array([int(actions[a]) for a in self.possible_agents], dtype=np.int64)
        self._rewards[:] = 0.0
        self._taken += 1
        self._to_run.put(chosen)
        ended = self._await_decision()
        rewards = {a: float(r) for a, r in zip(self.possible_agents, self._rewards, strict=True)}
        observations = self._observations()
        done = dict.fromkeys(self.agents, ended)
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        terminated = dict.fromkeys(self.agents, False)
        if ended:
            self.agents = []
        return observations, rewards, terminated, done, infos

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
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # --- the run's side of the handshake -----------------------------------------------------

    def _start(self, seed: int) -> None:
        self.config = self.config.model_copy(update={"seed": seed})
        self.ledger = self.ledger_factory()
        bus = Bus(self.ledger)
        for i, account in enumerate(self.possible_agents):
            bus.subscribe(account, functools.partial(self._on_own_event, i))
        bus.subscribe(SYSTEM, self._on_public_event)
        self._at_boundary, self._state = False, None
        self._thread = threading.Thread(target=self._run, args=(bus,), daemon=True)
        self._thread.start()

    def _run(self, bus: Bus) -> None:
        assert self.ledger is not None
        try:
            simulate_control(self.config, self.ledger, self, bus=bus, gate=self._gate)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the env's side, raised there
            self._error = e
        finally:
            self._from_run.put(None)

    def _gate(self) -> bool:
        """A new episode may start once the env's side says so (a reset)."""
        if self._state is not None:  # not the run's first episode: wait at the boundary
            self._at_boundary = True
            self._from_run.put("boundary")
            if self._to_run.get() == _STOP:
                return False
            self._at_boundary = False
        return True

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """The kernel asks for the controls: hand its state over and wait for the actions."""
        self._state = (x[0].copy(), previous[0].copy())
        self._from_run.put("decide")
        got = self._to_run.get()
        if isinstance(got, str):
            raise _Stopped
        out: NDArray[np.int64] = got[None, :]
        return out

    def _on_own_event(self, i: int, e: EventBase) -> None:
        if isinstance(e, Reward):
            sign = 1.0 if e.src == ENVIRONMENT else -1.0
            self._rewards[i] += sign * e.amount / UNIT

    def _on_public_event(self, e: EventBase) -> None:
        """After a step, every agent sees the next state and the controls just applied."""
        if isinstance(e, Transition):
            self._state = (np.asarray(e.next_x), np.asarray(e.controls))

    def _await_decision(self) -> bool:
        """Wait until the run asks for the next controls (False) or reaches the end of an
        episode (True)."""
        what = self._from_run.get()
        if what is None:
            self._thread = None
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise RuntimeError("the run ended")
        return bool(what == "boundary")

    def _observations(self) -> dict[str, NDArray[np.float64]]:
        assert self._state is not None
        x, previous = self._state
        return {
            a: np.concatenate([x, np.delete(previous, i)])
            for i, a in enumerate(self.possible_agents)
        }
