"""Any Gymnasium env with a `Discrete` action space as a society's task (`--task gym:ID`).

One primitive per action: primitive `a{i}` applies action i. States are ids that say where
an episode is, `episode * (horizon + 1) + step`, so they are a function of the episode and
the step alone: the ledger's `state` and `next_state` columns read as (episode, step), and
the audit can check every transformation's ids and re-step the env (`market.rederive`).

- **Seeds.** Episode e resets its env with `reset(seed=episode_seed(run seed, e))`, a draw of
  `SeedSequence(run seed, spawn_key=(e,))`, so one seed gives the same episodes whatever
  the kernel or concurrency, and the audit re-steps each episode from its number.
- **Termination and truncation are kept apart.** A transformation's `done` is the env's
  `terminated`. The env's time limit (`max_episode_steps`) is the task's horizon: its last
  step ends the episode without `done`, as every task's horizon does (MiniGrid's own
  `max_steps` where no limit is registered). On a time-out the last
  winner is paid the step's reward and nobody buys the state it leaves (no later auction),
  so its payoff is its reward alone, as at a terminal state. An env that truncates before
  its time limit is refused at that step (one line).
- **Rewards in credit.** The env's reward times `reward_scale` (`--reward-scale`; the
  default per env in `REWARD_SCALES`, 1 otherwise), so a society's Q can be a bid in
  [0, 1] credit: CartPole's +1 a step at 0.01 makes a perfect episode's discounted return at
  gamma 0.99 about 1 credit.
- **Observations.** What a learner sees of a state (`observe`): a `Box` as float32, images
  (H, W, C) as (C, H, W); a `Discrete` observation one-hot; MiniGrid's dict through
  `ImgObsWrapper`. Every observation of the last `OBSERVATIONS` states is held (a ring):
  enough for a learner's batch, flat in the run's length.
- **The ledger records what the env observed** (`recorded`): each `EpisodeStart` and
  `Transform` carries the observation of its state as the env gave it, flattened to float32
  (`obs`; its shape and dtype are in the run's env.json), so a run can be read, replayed or
  learned from offline without the env, and the audit checks each one against its re-step.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from market.tasks import GYM, Outcome, Task, TaskTables

OBSERVATIONS = 1 << 18
"""Observations held (the most recent states'): more than a learner's batch in flight."""
RECORDED = 1 << 16
"""Observations held for the ledger at most: each until a kernel records it (in the round
that makes it), so far more than a round's starts and steps; the oldest go first beyond."""
DEFAULT_HORIZON = 1000
"""The horizon of an env registered without a time limit."""
REWARD_SCALES: dict[str, float] = {
    "CartPole": 0.01,
    "Acrobot": 0.01,
    "MountainCar": 0.01,
    "LunarLander": 0.01,
    "Taxi": 0.05,
}
"""Credit per unit of reward, by the env id's name before its version (others: 1.0, as for
FrozenLake's and MiniGrid's rewards of at most 1 an episode)."""


class GymTaskError(ValueError):
    """An env id that cannot be a society's task, said in one line with the fix."""


REWARD_OFFSETS: dict[str, float] = {}
"""Reward added to every step's before scaling, by the env id's name (others: 0)."""


def _family(env: str) -> str:
    """An env id's name before its version (`ALE/Pong-v5` -> `Pong`)."""
    return env.split("/")[-1].rsplit("-v", 1)[0]


def reward_scale_of(env: str) -> float:
    """The default credit per unit of the env's reward (`REWARD_SCALES`)."""
    return REWARD_SCALES.get(_family(env), 1.0)


def reward_offset_of(env: str) -> float:
    """The default reward added to each of the env's steps (`REWARD_OFFSETS`)."""
    return REWARD_OFFSETS.get(_family(env), 0.0)


def env_return(credit: Any, steps: Any, scale: float, offset: float) -> Any:
    """An episode's return in the env's units from its return in credit over `steps` steps:
    `credit` undone (`GymTask.credit`). Numbers or Polars expressions alike."""
    return credit / scale - offset * steps


def episode_seed(seed: int, episode: int) -> int:
    """The seed episode `episode` of a run of `seed` resets its env with."""
    return int(np.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1)[0])


def make_env(env: str) -> Any:
    """`gymnasium.make(env)` with the wrappers a society reads it through; a GymTaskError
    naming the problem and its fix otherwise."""
    import gymnasium

    if env.startswith("MiniGrid"):
        importlib.import_module("minigrid")  # registers its ids
    try:
        made = gymnasium.make(env)
    except gymnasium.error.DependencyNotInstalled as e:
        raise GymTaskError(f"gym:{env} needs a package not installed ({e})") from None
    except gymnasium.error.Error as e:
        raise GymTaskError(
            f"unknown Gymnasium id {env!r} ({e}); `market tasks` shows how to name one"
        ) from None
    except (ImportError, ModuleNotFoundError) as e:
        raise GymTaskError(f"gym:{env} cannot be made: {e}") from None
    if env.startswith("MiniGrid"):
        from minigrid.wrappers import ImgObsWrapper

        made = ImgObsWrapper(made)  # type: ignore[no-untyped-call]
    return made


def observer(space: Any, env: str) -> tuple[tuple[int, ...], Callable[[Any], NDArray[np.float32]]]:
    """The shape a learner reads of an observation space, and the map to it."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        n, low = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)
        return (n,), lambda o: eye[int(o) - low]
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return (int(space.shape[0]),), lambda o: np.asarray(o, dtype=np.float32)
    if isinstance(space, spaces.Box) and len(space.shape) == 3:
        h, w, c = (int(d) for d in space.shape)
        return (c, h, w), lambda o: np.asarray(o, dtype=np.float32).transpose(2, 0, 1)
    raise GymTaskError(
        f"gym:{env}'s observations ({space}) are not ones the bidders read: a Box of one "
        "dimension, an image (H, W, C) or a Discrete; wrap the env (FlattenObservation) "
        "and register it under a task name of your own"
    )


class Stepper:
    """The episodes of an env id in flight: one env each (reused once an episode ends), reset
    from the episode's seed and stepped in order. The task steps it for the kernels; the
    audit re-steps a ledger's episodes with one of its own (`market.rederive`)."""

    def __init__(self, env: str, seed: int, horizon: int, first_action: int, probe: Any) -> None:
        self.env_id, self.seed, self.horizon, self.first_action = env, seed, horizon, first_action
        self._free: list[Any] = [probe]
        self._env_of: dict[int, Any] = {}
        self._next: dict[int, int] = {}
        """Per episode in flight: the step it is at."""

    def begin(self, episode: int) -> Any:
        """Reset an env for `episode` from its seed: its first observation."""
        env = self._free.pop() if self._free else make_env(self.env_id)
        self._env_of[episode], self._next[episode] = env, 0
        obs, _ = env.reset(seed=episode_seed(self.seed, episode))
        return obs

    def at(self, episode: int) -> int | None:
        """The step `episode` is at, None if it is not in flight."""
        return self._next.get(episode)

    def step(self, episode: int, primitive: int) -> tuple[Any, float, bool, bool]:
        """Apply primitive `primitive` at the episode's current step: the observation, the
        reward (the env's), whether the env terminated, and whether the episode is over
        (terminated, or the time limit's last step; its env is then free)."""
        env, t = self._env_of[episode], self._next[episode]
        obs, reward, terminated, truncated, _ = env.step(self.first_action + primitive)
        over = bool(terminated) or t + 1 >= self.horizon
        if truncated and not over:
            raise GymTaskError(
                f"gym:{self.env_id} truncated episode {episode} at step {t + 1}, before its "
                f"time limit ({self.horizon}); only the time limit may cut an episode short"
            )
        if over:
            self._free.append(self._env_of.pop(episode))
            del self._next[episode]
        else:
            self._next[episode] = t + 1
        return obs, float(reward), bool(terminated), over


class GymTask(Task):
    """A Gymnasium env as a task, its episodes stepped by a `Stepper`; observations held for
    the learners (`observe`)."""

    tabular = False
    records = True

    def __init__(
        self,
        env: str,
        seed: int = 0,
        reward_scale: float | None = None,
        reward_offset: float | None = None,
    ) -> None:
        from gymnasium import spaces

        self.env_id, self.name, self.seed = env, GYM + env, seed
        probe = make_env(env)
        actions = probe.action_space
        if not isinstance(actions, spaces.Discrete):
            raise GymTaskError(
                f"gym:{env} has a {type(actions).__name__} action space; the auction variant "
                "needs Discrete actions (one primitive each): try --variant control"
            )
        self.primitive_names = tuple(f"a{i}" for i in range(int(actions.n)))
        self.observation_shape, self._convert = observer(probe.observation_space, env)
        self.horizon = time_limit(probe)
        self.reward_scale = reward_scale if reward_scale is not None else reward_scale_of(env)
        self.reward_offset = reward_offset if reward_offset is not None else reward_offset_of(env)
        self.wrappers = _wrappers(probe)
        """The wrappers the env is read through, outermost first."""
        self.stepper = Stepper(env, seed, self.horizon, int(actions.start), probe)
        self._held = np.full(OBSERVATIONS, -1, dtype=np.int64)
        """Per row of `_obs`, the state it holds (-1: none)."""
        self._obs = np.zeros((OBSERVATIONS, *self.observation_shape), dtype=np.float32)
        self._row_of: dict[int, int] = {}
        """Per state held, its row: rows go round in the order states are reached, so the
        last OBSERVATIONS states are held whatever their ids (episodes far apart in number
        are in flight at once)."""
        self._next_row = 0
        self.record_width = flat_size(probe.observation_space)
        space = probe.observation_space
        self.observation_space = {
            "space": str(space),
            "shape": list(getattr(space, "shape", None) or ()),
            "dtype": str(space.dtype),
        }
        """The env's observation space, which the ledger's `obs` flatten (for env.json)."""
        self._unrecorded: dict[int, NDArray[np.float32]] = {}
        """Per state reached or started and not yet recorded, what the env observed of it
        (keyed by state, not by a ring's row: episodes far apart in number are in flight at
        once, and their states would share rows)."""

    @property
    def span(self) -> int:
        """State ids per episode: its steps and the state after its last."""
        return self.horizon + 1

    def credit(self, reward: float) -> float:
        """An env reward in credit: offset, then scaled (`env_return` undoes it)."""
        return (reward + self.reward_offset) * self.reward_scale

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        ids = np.asarray(episodes, dtype=np.int64) * self.span
        for episode, state in zip(episodes.tolist(), ids.tolist(), strict=True):
            obs = self.stepper.begin(episode)
            self._hold(state, obs)
            self._record(state, obs)
        return ids

    def transition(self, states: NDArray[np.int64], primitives: NDArray[np.int64]) -> TaskTables:
        n = len(states)
        reward, done = np.zeros(n), np.zeros(n, dtype=bool)
        pairs = zip(states.tolist(), primitives.tolist(), strict=True)
        for i, (state, primitive) in enumerate(pairs):
            reward[i], done[i] = self._step(state, primitive)
        return TaskTables(np.asarray(states, dtype=np.int64) + 1, reward, done, np.ones(n))

    def step(self, state: int, primitive: int) -> Outcome:
        reward, done = self._step(state, primitive)
        return Outcome(state + 1, reward, done)

    def _step(self, state: int, primitive: int) -> tuple[float, bool]:
        obs, reward, terminated, over = self.stepper.step(state // self.span, primitive)
        if not over:
            self._hold(state + 1, obs)
        self._record(state + 1, obs)
        return self.credit(reward), terminated

    def _record(self, state: int, obs: Any) -> None:
        held = self._unrecorded
        held[state] = flat(obs)
        if len(held) > RECORDED:  # a caller that never records (a script stepping the task)
            del held[next(iter(held))]

    def recorded(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        """What the env observed of `states`, each handed over once (the kernels record each
        state in the round that reaches or starts it)."""
        out = np.empty((len(states), self.record_width), dtype=np.float32)
        for i, state in enumerate(np.asarray(states).tolist()):
            try:
                out[i] = self._unrecorded.pop(state)
            except KeyError:
                raise RuntimeError(
                    f"{self.name}: no observation of state {state} to record"
                ) from None
        return out

    def _hold(self, state: int, obs: Any) -> None:
        row = self._next_row
        self._next_row = (row + 1) % OBSERVATIONS
        self._row_of.pop(int(self._held[row]), None)
        self._held[row], self._row_of[state] = state, row
        self._obs[row] = self._convert(obs)

    def observe(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        row_of = self._row_of
        try:
            rows = np.fromiter((row_of[s] for s in np.asarray(states).tolist()), np.int64)
        except KeyError:
            raise RuntimeError(
                f"{self.name}: an observation asked for is no longer held (the last "
                f"{OBSERVATIONS} states' are)"
            ) from None
        return self._obs[rows]


def flat(obs: Any) -> NDArray[np.float32]:
    """An observation as the ledger records it: flattened, as float32."""
    return np.asarray(obs, dtype=np.float32).ravel()


def flat_size(space: Any) -> int:
    """The length of `flat` of an observation of `space` (a `Discrete` one is its value)."""
    shape = getattr(space, "shape", None) or ()
    return int(np.prod(shape)) if shape else 1


def time_limit(env: Any) -> int:
    """The steps an episode of `env` may take: its registered `max_episode_steps`, else its
    own `max_steps` (MiniGrid's), else `DEFAULT_HORIZON`."""
    spec = env.spec
    limit = spec.max_episode_steps if spec is not None else None
    limit = limit or getattr(env.unwrapped, "max_steps", None)
    return int(limit) if limit else DEFAULT_HORIZON


def _wrappers(env: Any) -> tuple[str, ...]:
    names = []
    while hasattr(env, "env"):
        names.append(type(env).__name__)
        env = env.env
    return tuple(names)
