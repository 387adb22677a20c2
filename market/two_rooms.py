"""Two Rooms (Chang et al. 2020; methods.md, Part 1): a MiniGrid world of two 5x5 rooms
joined by a closed red door, a green and a blue goal in room 2, and three frozen options
(open the door and enter room 2; go to green; go to blue) as the society's primitives.

The task is a semi-MDP over integer state ids. An id holds everything the dynamics and the
reward depend on: the agent's cell and direction, whether the door is open, and the env step
count (the success reward decays with it, and the episode times out at `MAX_STEPS`). Running
a frozen option is a deterministic function of the id: it acts greedily until its
termination predicate holds, `OPTION_STEPS` env steps have passed, or the episode ends, and
its outcome is (next id, the discounted reward inside it, done, Delta env steps).

The options are trained by `agents/option_ppo.py` (market never imports agents) and read from
the cache (`options_path`); tests inject scripted ones (`Options`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, SupportsFloat

import numpy as np
import torch
from gymnasium import spaces
from minigrid.core.actions import Actions
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door, Goal
from minigrid.minigrid_env import MiniGridEnv
from numpy.typing import NDArray
from torch import nn

from market.cache import cache_dir
from market.tasks import START_DRAWS, Outcome, Task, TaskTables, start_draws

WIDTH, HEIGHT = 13, 7
"""The grid with its outer walls: room 1 is x 1..5, the dividing wall x = 6, room 2 x 7..11."""
WALL_X = 6
DOOR = (6, 3)
"""The red door, in the middle of the dividing wall."""
GOALS: dict[str, tuple[int, int]] = {"green": (11, 1), "blue": (11, 5)}
"""The goals, in room 2's far corners, equally far from the door."""
MAX_STEPS = 100
"""Env steps per episode (MiniGrid's time-out; the success reward decays over it)."""
OPTION_STEPS = 30
"""The step cap of every option: about twice the longest shortest path it needs."""
HORIZON = 8
"""Option calls per episode (the kernel's time-out; `MAX_STEPS` also ends an episode)."""
OPTION_NAMES = ("door", "green", "blue")
ACTIONS = (Actions.left, Actions.right, Actions.forward, Actions.toggle)
"""What an option can do: MiniGrid's actions less pickup, drop and done (no-ops here)."""
VERSION = 1
"""Of the options checkpoint: bump it when the layout, the network or the training change."""
OPTIONS_SEED = 0
"""The training seed of the options every run loads."""

_ROOM1_X, _ROOM2_X, _ROOMS_Y = range(1, 6), range(7, 12), range(1, 6)
_T = MAX_STEPS + 1
_AGENT = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"])
_SCALE = np.array([OBJECT_TO_IDX["agent"], max(COLOR_TO_IDX.values()), 3], np.float32)
"""Divides the (object, colour, state) channels into [0, 1]."""
_SCALE_T = torch.as_tensor(_SCALE).view(1, 3, 1, 1)


# --- state ids -------------------------------------------------------------------------------


class Cells(NamedTuple):
    """State ids taken apart, as arrays: agent x, y, direction, door open, env step count."""

    x: NDArray[np.int64]
    y: NDArray[np.int64]
    direction: NDArray[np.int64]
    door: NDArray[np.int64]
    t: NDArray[np.int64]


N_STATES = WIDTH * HEIGHT * 4 * 2 * _T


def state_ids(x: Any, y: Any, direction: Any, door: Any, t: Any) -> NDArray[np.int64]:
    """The ids of (x, y, direction, door open, step count), as arrays (broadcast)."""
    parts = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.int64) for v in (x, y, direction, door, t))
    )
    x_, y_, d_, o_, t_ = parts
    return np.asarray(((((x_ * HEIGHT + y_) * 4 + d_) * 2 + o_) * _T + t_), dtype=np.int64)


def decode(states: NDArray[np.int64]) -> Cells:
    """`state_ids` inverted."""
    s = np.asarray(states, dtype=np.int64)
    s, t = np.divmod(s, _T)
    s, door = np.divmod(s, 2)
    s, direction = np.divmod(s, 4)
    x, y = np.divmod(s, HEIGHT)
    return Cells(x, y, direction, door, t)


def layout() -> tuple[Grid, Door]:
    """The grid: outer walls, the dividing wall with its closed red door, the two goals."""
    grid = Grid(WIDTH, HEIGHT)
    grid.wall_rect(0, 0, WIDTH, HEIGHT)
    grid.vert_wall(WALL_X, 0, HEIGHT)
    door = Door("red", is_open=False, is_locked=False)
    grid.set(*DOOR, door)
    for color, (gx, gy) in GOALS.items():
        grid.set(gx, gy, Goal(color))
    return grid, door


def _base_grids() -> NDArray[np.uint8]:
    """MiniGrid's encoding of the layout, (door closed/open, 3, H, W), channels first."""
    grid, door = layout()
    out = np.zeros((2, 3, HEIGHT, WIDTH), np.uint8)
    for is_open in (0, 1):
        door.is_open = bool(is_open)
        out[is_open] = grid.encode().transpose(2, 1, 0)
    return out


_BASE: list[NDArray[np.uint8]] = []


def _base() -> NDArray[np.uint8]:
    """`_base_grids()`, computed once."""
    if not _BASE:
        _BASE.append(_base_grids())
    return _BASE[0]


def encode(states: NDArray[np.int64]) -> NDArray[np.uint8]:
    """MiniGrid's full-grid encoding (as `FullyObsWrapper`) of each state, channels first:
    (n, 3, H, W) of (object, colour, state); the agent's cell holds (agent, red, direction)."""
    c = decode(states)
    out = _base()[c.door]
    rows = np.arange(len(c.x))
    out[rows, 0, c.y, c.x] = _AGENT[0]
    out[rows, 1, c.y, c.x] = _AGENT[1]
    out[rows, 2, c.y, c.x] = c.direction
    return out


def on_goal(states: NDArray[np.int64], goal: str) -> NDArray[np.bool_]:
    """Whether the agent stands on goal `goal` ("green" or "blue")."""
    c, (gx, gy) = decode(states), GOALS[goal]
    return np.asarray((c.x == gx) & (c.y == gy))


def episode_over(states: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether an episode has ended in each state: on a goal, or at the time-out."""
    ended = on_goal(states, "green") | on_goal(states, "blue") | (decode(states).t >= MAX_STEPS)
    return np.asarray(ended)


def option_ends(option: int, states: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Each option's termination predicate: door, the agent stands in room 2; green, on
    green; blue, on blue."""
    if OPTION_NAMES[option] == "door":
        return np.asarray(decode(states).x > WALL_X)
    return on_goal(states, OPTION_NAMES[option])


def option_stopped(
    states: NDArray[np.int64], primitives: NDArray[np.int64], next_states: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Whether option `primitives` run from `states` may have stopped at `next_states`, read
    from the ids alone (where it went is the options' choice): from an ended episode it
    stays put; otherwise it took at least one env step and stopped at its termination
    predicate, at the episode's end or after `OPTION_STEPS` steps."""
    states, nxt = np.asarray(states, np.int64), np.asarray(next_states, np.int64)
    was_over, before, after = episode_over(states), decode(states).t, decode(nxt).t
    stopped = np.zeros(len(states), dtype=bool)
    for option in range(len(OPTION_NAMES)):
        rows = primitives == option
        stopped[rows] = option_ends(option, nxt[rows])
    stopped |= episode_over(nxt) | (after - before == OPTION_STEPS)
    return np.where(was_over, nxt == states, (after > before) & stopped)


def option_reward(
    next_states: NDArray[np.int64], steps: NDArray[np.int64], goal: str, gamma: float
) -> NDArray[np.float64]:
    """What an option that took `steps` env steps to `next_states` earns: MiniGrid's
    1 - 0.9 t / MAX_STEPS (t the step count on arrival) when its last step reached `goal`,
    discounted by `gamma` once per step before it, as `TwoRooms` sums it step by step (so
    to the same float); 0 otherwise (the other goal, the time-out, an option's own end)."""
    steps = np.asarray(steps, dtype=np.int64)
    discount = np.ones(len(steps))
    for k in range(max(int(steps.max(initial=0)) - 1, 0)):
        discount = np.where(k < steps - 1, discount * gamma, discount)
    arrived = decode(next_states).t.astype(np.float64)
    paid = 1 - 0.9 * (arrived / MAX_STEPS)
    return np.where(on_goal(next_states, goal) & (steps > 0), 0.0 + discount * paid, 0.0)


def room1_states() -> NDArray[np.int64]:
    """Every room-1 cell x 4 directions, door closed, step 0: where episodes start (100)."""
    x, y, d = np.meshgrid(_ROOM1_X, _ROOMS_Y, range(4), indexing="ij")
    return np.sort(state_ids(x.ravel(), y.ravel(), d.ravel(), 0, 0))


def option_starts(option: int) -> NDArray[np.int64]:
    """Where an option is trained and evaluated from (uniformly), all at step 0. Door: every
    room-1 cell x direction, door closed or open. Goals: every room-2 cell but the goals, x
    direction, door closed or open, and the open door's cell."""
    if OPTION_NAMES[option] == "door":
        x, y, d, o = np.meshgrid(_ROOM1_X, _ROOMS_Y, range(4), (0, 1), indexing="ij")
        return np.sort(state_ids(x.ravel(), y.ravel(), d.ravel(), o.ravel(), 0))
    x, y, d, o = np.meshgrid(_ROOM2_X, _ROOMS_Y, range(4), (0, 1), indexing="ij")
    room2 = state_ids(x.ravel(), y.ravel(), d.ravel(), o.ravel(), 0)
    room2 = room2[~(on_goal(room2, "green") | on_goal(room2, "blue"))]
    doorway = state_ids(DOOR[0], DOOR[1], np.arange(4), 1, 0)
    return np.sort(np.concatenate([room2, doorway]))


# --- the MiniGrid environment ----------------------------------------------------------------


class TwoRoomsEnv(MiniGridEnv):
    """Two 5x5 rooms joined by a closed (unlocked) red door, the green and blue goals in room
    2. Reaching `goal` pays MiniGrid's 1 - 0.9 * step_count / max_steps and ends the episode;
    reaching the other goal ends it with 0. Its observation `image` is the full-grid encoding
    (W, H, 3), as `FullyObsWrapper` gives it. `restore(state_id)` puts it in any state."""

    def __init__(self, goal: str = "green", max_steps: int = MAX_STEPS, **kwargs: Any) -> None:
        if goal not in GOALS:
            raise ValueError(f"unknown goal {goal!r}; choose one of: {', '.join(GOALS)}")
        self.goal = goal
        self.door = Door("red", is_open=False, is_locked=False)
        mission = MissionSpace(mission_func=lambda: f"get to the {goal} goal")
        super().__init__(
            mission_space=mission, width=WIDTH, height=HEIGHT, max_steps=max_steps, **kwargs
        )
        image = spaces.Box(0, 255, (WIDTH, HEIGHT, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(
            {"image": image, "direction": spaces.Discrete(4), "mission": mission}
        )
        self.reset()

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid, self.door = layout()
        self.agent_pos, self.agent_dir = (1, 1), 0
        self.mission = f"get to the {self.goal} goal"

    def gen_obs(self) -> dict[str, Any]:
        """The full grid (cheaper than the egocentric view, which nothing here reads)."""
        image = _base()[int(self.door.is_open)].transpose(2, 1, 0).copy()
        image[self.agent_pos[0], self.agent_pos[1]] = (*_AGENT, self.agent_dir)
        return {"image": image, "direction": self.agent_dir, "mission": self.mission}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated:  # only a goal ends a Two Rooms episode; the other one pays nothing
            cell = self.grid.get(*self.agent_pos)
            reward = self._reward() if cell is not None and cell.color == self.goal else 0.0
        return obs, float(reward), terminated, truncated, info

    def state_id(self) -> int:
        """The id of the env's current state."""
        x, y = self.agent_pos
        door = int(self.door.is_open)
        return int((((x * HEIGHT + y) * 4 + self.agent_dir) * 2 + door) * _T + self.step_count)

    def restore(self, state: int) -> None:
        """Put the agent, the door and the step count where `state` says."""
        # plain ints, not `decode`: this runs once per env step of every option
        rest, self.step_count = divmod(state, _T)
        rest, door = divmod(rest, 2)
        rest, self.agent_dir = divmod(rest, 4)
        self.agent_pos = divmod(rest, HEIGHT)
        self.door.is_open = bool(door)


def env_steps(
    env: TwoRoomsEnv, states: NDArray[np.int64], actions: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.bool_]]:
    """One env step from each state with each action (an index into `ACTIONS`), restoring
    `env` to each state in turn: the next states, the rewards, and whether the episode ended."""
    nxt, reward = np.empty_like(states), np.zeros(len(states))
    done = np.zeros(len(states), dtype=bool)
    for i, (s, a) in enumerate(zip(states.tolist(), actions.tolist(), strict=True)):
        env.restore(s)
        _, r, terminated, truncated, _ = env.step(ACTIONS[a])
        nxt[i], reward[i], done[i] = env.state_id(), float(r), terminated or truncated
    return nxt, reward, done


# --- the options -----------------------------------------------------------------------------


class OptionNet(nn.Module):
    """A small CNN over the full-grid encoding (3, 7, 13) with a categorical head over
    `ACTIONS` (what a frozen option uses) and a value head (what trains it)."""

    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 2),
            nn.ReLU(),
            nn.Conv2d(width, width, 2),
            nn.ReLU(),
            nn.Conv2d(width, width, 2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * (HEIGHT - 3) * (WIDTH - 3), hidden),
            nn.ReLU(),
        )
        self.policy = nn.Linear(hidden, len(ACTIONS))
        self.value = nn.Linear(hidden, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The shared trunk's output for a batch of uint8 encodings (n, 3, H, W)."""
        out: torch.Tensor = self.body(images.float() / _SCALE_T)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The action logits for a batch of uint8 encodings (n, 3, H, W)."""
        out: torch.Tensor = self.policy(self.features(images))
        return out


class Options(Protocol):
    """The three options: greedy actions from observations, and when each ends."""

    def act(self, option: int, images: NDArray[np.uint8]) -> NDArray[np.int64]:
        """Option `option`'s action (an index into `ACTIONS`) for each encoding (n, 3, H, W)."""
        ...

    def ends(self, option: int, states: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether option `option` terminates in each state."""
        ...


class FrozenOptions:
    """Trained `OptionNet`s acting greedily (argmax), so that an option's run is a function
    of its start state; they end by `option_ends`."""

    def __init__(self, nets: list[OptionNet]) -> None:
        self.nets = nets
        for net in nets:
            net.eval().requires_grad_(False)

    @torch.no_grad()
    def act(self, option: int, images: NDArray[np.uint8]) -> NDArray[np.int64]:
        logits = self.nets[option](torch.from_numpy(images))
        return np.asarray(logits.argmax(-1).numpy(), dtype=np.int64)

    def ends(self, option: int, states: NDArray[np.int64]) -> NDArray[np.bool_]:
        return option_ends(option, states)


def options_path(seed: int = OPTIONS_SEED) -> Path:
    """Where the options trained from `seed` are kept (the name carries `VERSION`)."""
    return cache_dir() / f"two-rooms-options-v{VERSION}-seed{seed}.pt"


def load_checkpoint(seed: int = OPTIONS_SEED) -> dict[str, Any]:
    """The stored options of `seed` (weights, settings, measured success); a ValueError says
    how to train them if they are missing."""
    path = options_path(seed)
    if not path.exists():
        raise ValueError(
            f"Two Rooms needs its trained options at {path}: "
            f"train them with `python -m agents.option_ppo --seed {seed}` (a few minutes)"
        )
    checkpoint: dict[str, Any] = torch.load(path, weights_only=True)
    return checkpoint


def load_options(seed: int = OPTIONS_SEED) -> FrozenOptions:
    """The frozen options trained from `seed`, from the cache."""
    checkpoint = load_checkpoint(seed)
    nets = []
    for name in OPTION_NAMES:
        net = OptionNet()
        net.load_state_dict(checkpoint["options"][name])
        nets.append(net)
    return FrozenOptions(nets)


# --- the task --------------------------------------------------------------------------------


class TwoRooms(Task):
    """Two Rooms as a semi-MDP over state ids: every primitive runs one frozen option to its
    end, taking Delta env steps; its reward is sum_k gamma^k r_k inside it. Episodes start
    uniformly in room 1, the same for every batching (`starts`)."""

    primitive_names = OPTION_NAMES
    horizon = HORIZON
    n_states = N_STATES
    observation_shape = (4, HEIGHT, WIDTH)
    """MiniGrid's full-grid encoding scaled into [0, 1], and the elapsed fraction of
    `MAX_STEPS` as a fourth plane (the reward and the time-out depend on it)."""
    tabular = False
    _CHUNK = START_DRAWS

    def __init__(
        self,
        goal: str = "green",
        seed: int = 0,
        gamma: float = 0.99,
        options: Options | None = None,
    ) -> None:
        self.goal, self.seed, self.gamma = goal, seed, gamma
        self.name = "tworooms" if goal == "green" else f"tworooms-{goal}"
        self.options = options if options is not None else load_options()
        self.env = TwoRoomsEnv(goal)
        self._room1 = room1_states()
        self._drawing = start_draws(seed, len(self._room1), self._CHUNK)
        self._drawn = np.zeros(0, dtype=np.int64)
        self._memo: dict[tuple[int, int], Outcome] = {}

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        """Episode e starts in the e-th draw of one uniform sequence over `room1_states`."""
        episodes = np.asarray(episodes, dtype=np.int64)
        while len(episodes) and len(self._drawn) <= int(episodes.max()):
            self._drawn = np.concatenate([self._drawn, next(self._drawing)])
        return np.asarray(self._room1[self._drawn[episodes]], dtype=np.int64)

    def step(self, state: int, primitive: int) -> Outcome:
        key = (int(state), int(primitive))
        if key not in self._memo:
            self._run([key])
        return self._memo[key]

    def transition(self, states: NDArray[np.int64], primitives: NDArray[np.int64]) -> TaskTables:
        keys = list(zip(np.asarray(states).tolist(), np.asarray(primitives).tolist(), strict=True))
        missing = sorted({k for k in keys if k not in self._memo})
        if missing:
            self._run(missing)
        outs = [self._memo[k] for k in keys]
        return TaskTables(
            next_state=np.array([o.next_state for o in outs], dtype=np.int64),
            reward=np.array([o.reward for o in outs], dtype=np.float64),
            done=np.array([o.done for o in outs], dtype=bool),
            duration=np.array([o.duration for o in outs], dtype=np.float64),
        )

    def tables(self) -> TaskTables:
        raise ValueError(
            f"task {self.name!r} has no transition table ({self.n_states} states, each option "
            "a network run): use `transition` or `step`"
        )

    def observe(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        images = encode(states).astype(np.float32) / _SCALE.reshape(1, 3, 1, 1)
        t = decode(states).t.astype(np.float32) / MAX_STEPS
        plane = np.broadcast_to(t.reshape(-1, 1, 1, 1), (len(t), 1, HEIGHT, WIDTH))
        return np.concatenate([images, plane], axis=1)

    def _run(self, keys: list[tuple[int, int]]) -> None:
        """Run the options of `keys` (state, primitive) in lockstep, one batched `act` per
        option per env step, and memoise their outcomes. An option takes at least one step."""
        with one_torch_thread():
            self._run_options(keys)

    def _run_options(self, keys: list[tuple[int, int]]) -> None:
        state = np.array([k[0] for k in keys], dtype=np.int64)
        prim = np.array([k[1] for k in keys], dtype=np.int64)
        reward, discount, steps = np.zeros(len(keys)), np.ones(len(keys)), np.zeros(len(keys))
        done = episode_over(state)
        running = ~done
        for _ in range(OPTION_STEPS):
            rows = np.flatnonzero(running)
            if not len(rows):
                break
            action = _by_option(self.options.act, prim[rows], encode(state[rows]))
            state[rows], r, done[rows] = env_steps(self.env, state[rows], action)
            reward[rows] += discount[rows] * r
            discount[rows] *= self.gamma
            steps[rows] += 1
            ends = _by_option(self.options.ends, prim[rows], state[rows]).astype(bool)
            running[rows] = ~done[rows] & ~ends
        for i, key in enumerate(keys):
            self._memo[key] = Outcome(
                int(state[i]), float(reward[i]), bool(done[i]), float(steps[i])
            )


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread meanwhile, as before after: the option nets see small batches, and
    more threads only contend (on a busy machine one forward took 160 ms with two threads,
    1 ms with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _by_option(
    fn: Callable[[int, NDArray[Any]], NDArray[Any]], prims: NDArray[np.int64], inputs: NDArray[Any]
) -> NDArray[np.int64]:
    """`fn(option, rows)` over each option's rows of `inputs`, put back in row order."""
    out = np.zeros(len(prims), dtype=np.int64)
    for p in np.unique(prims).tolist():
        rows = prims == p
        out[rows] = fn(p, inputs[rows])
    return out
