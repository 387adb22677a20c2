"""The tasks of Chang et al. (2020): the tabular Bandit, Chain and Duality (Q* by value
iteration) here, and the registry of every task, including those over images.

A task is a deterministic (semi-)MDP over integer state ids: `step(state, primitive)` gives the
next state, the reward (credit), whether the episode ends, and the duration in SimPy time (an
option that runs Delta env steps takes Delta). The ledger records state ids only.

Tasks whose states are images (Mental Rotation, Two Rooms) say so with `observation_shape`;
`observe(states)` gives what a learner sees of each id. Their episodes may start anywhere:
`starts(episodes)` is a function of the episode number and the task's seed, so the two
kernels start every episode in the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, NamedTuple

import numpy as np
from numpy.typing import NDArray


class Outcome(NamedTuple):
    """What one transformation did."""

    next_state: int
    reward: float
    done: bool
    duration: float = 1.0


class TaskTables(NamedTuple):
    """A tabular task's `step` for every (state, primitive) at once."""

    next_state: NDArray[np.int64]
    reward: NDArray[np.float64]
    done: NDArray[np.bool_]
    duration: NDArray[np.float64]


class Task:
    """A deterministic task over integer state ids; subclasses define `step` (and, over
    images, `observe` and `starts`)."""

    name: str = ""
    n_states: int = 0
    primitive_names: tuple[str, ...] = ()
    horizon: int = 1
    start: int = 0
    observation_shape: tuple[int, ...] | None = None
    """The shape of `observe`'s array per state; None for tabular tasks (learners one-hot
    the state id)."""
    tabular: bool = True
    """Whether tables over every state (`tables`, `q_star`) are practical."""
    records: bool = False
    """Whether the ledger records what the task observed of its states (`recorded`): a
    Gymnasium env's observations; other tasks' state ids are their own record."""
    _tables: TaskTables | None = None

    @property
    def n_primitives(self) -> int:
        """How many primitives (transformations) the task offers."""
        return len(self.primitive_names)

    def step(self, state: int, primitive: int) -> Outcome:
        """Apply primitive `primitive` to `state`."""
        raise NotImplementedError

    def tables(self) -> TaskTables:
        """The whole transition table as arrays indexed [state, primitive] (for the round
        kernel, which steps many episodes at once)."""
        cells = [[self.step(s, a) for a in range(self.n_primitives)] for s in range(self.n_states)]
        return TaskTables(
            next_state=np.array([[o.next_state for o in row] for row in cells], dtype=np.int64),
            reward=np.array([[o.reward for o in row] for row in cells], dtype=np.float64),
            done=np.array([[o.done for o in row] for row in cells], dtype=bool),
            duration=np.array([[o.duration for o in row] for row in cells], dtype=np.float64),
        )

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        """The first state of each episode numbered in `episodes`."""
        return np.full(len(episodes), self.start, dtype=np.int64)

    def transition(self, states: NDArray[np.int64], primitives: NDArray[np.int64]) -> TaskTables:
        """`step` for many (state, primitive) pairs at once, as arrays in their order."""
        if self._tables is None:
            self._tables = self.tables()
        t = self._tables
        return TaskTables(
            next_state=t.next_state[states, primitives],
            reward=t.reward[states, primitives],
            done=t.done[states, primitives],
            duration=t.duration[states, primitives],
        )

    def observe(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        """What a learner sees of each state: shape (len(states), *observation_shape)."""
        raise NotImplementedError(f"task {self.name!r} is tabular: learners see the state id")

    def recorded(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        """What the task observed of each of `states` (just started or just reached), one
        flattened row each, as the ledger records it (`obs`), where the task `records`."""
        raise NotImplementedError(f"task {self.name!r} records no observations")

    def q_star(self, gamma: float, sweeps: int = 10_000) -> NDArray[np.float64]:
        """Q*(s, a) of the stationary discounted MDP (the time-out is not part of the state)."""
        if not self.tabular:
            raise ValueError(f"task {self.name!r} has no Q* table ({self.n_states} states)")
        q = np.zeros((self.n_states, self.n_primitives))
        table = [[self.step(s, a) for a in range(self.n_primitives)] for s in range(self.n_states)]
        for _ in range(sweeps):
            v = q.max(axis=1)
            new = np.array(
                [
                    [
                        o.reward + (0.0 if o.done else gamma**o.duration * v[o.next_state])
                        for o in row
                    ]
                    for row in table
                ]
            )
            if np.array_equal(new, q):
                break
            q = new
        return q


class Bandit(Task):
    """One state, one step, four arms paying 0.2, 0.4, 0.6, 0.8."""

    name = "bandit"
    n_states = 1
    primitive_names = ("arm0", "arm1", "arm2", "arm3")
    horizon = 1
    payouts = (0.2, 0.4, 0.6, 0.8)

    def step(self, state: int, primitive: int) -> Outcome:
        return Outcome(next_state=0, reward=self.payouts[primitive], done=True)


DISTRACTORS = ("stay", "reset", "back")
"""Chain's useless primitives, in turn: stay put, go back to 0, step back 2 + k cells (the
k-th of its kind); none ever moves towards the goal."""


class Chain(Task):
    """States 0..5 from 0; R moves right, L left (stays at 0); reaching 5 pays 0.8 and ends.

    With `primitives` > 2 the society also holds useless primitives (DISTRACTORS in turn:
    `stay0`, `reset0`, `back0`, `stay1`, ...), which never move towards the goal: only R makes
    progress, and `reset` undoes it: useless members that a wealth economy should starve.
    """

    name = "chain"
    n_states = 6
    primitive_names: tuple[str, ...] = ("L", "R")
    horizon = 20
    goal = 5

    def __init__(self, primitives: int = 2) -> None:
        if primitives < 2:
            raise ValueError(
                f"chain needs its two moves L and R: --primitives >= 2 (got {primitives})"
            )
        extra = range(primitives - 2)
        self.primitive_names = ("L", "R", *(f"{DISTRACTORS[i % 3]}{i // 3}" for i in extra))

    def step(self, state: int, primitive: int) -> Outcome:
        if state == self.goal:  # the goal is terminal: nothing more happens there
            return Outcome(next_state=state, reward=0.0, done=True)
        if primitive >= 2:
            i, kind = divmod(primitive - 2, 3)
            nxt = (state, 0, max(state - 2 - i, 0))[kind]
            return Outcome(next_state=nxt, reward=0.0, done=False)
        nxt = state + 1 if primitive == 1 else max(state - 1, 0)
        done = nxt == self.goal
        return Outcome(next_state=nxt, reward=0.8 if done else 0.0, done=done)


class Duality(Task):
    """States 0, 1 and an absorbing 2 paying -1 per step; alternating a1, a0 pays 0.5 a step."""

    name = "duality"
    n_states = 3
    primitive_names = ("a0", "a1")
    horizon = 10
    table: ClassVar[dict[tuple[int, int], tuple[int, float]]] = {
        (0, 0): (2, 0.0),
        (0, 1): (1, 0.5),
        (1, 0): (0, 0.5),
        (1, 1): (1, 0.3),
        (2, 0): (2, -1.0),
        (2, 1): (2, -1.0),
    }

    def step(self, state: int, primitive: int) -> Outcome:
        nxt, reward = self.table[(state, primitive)]
        return Outcome(next_state=nxt, reward=reward, done=False)


START_DRAWS = 4096
"""Episode starts are drawn this many at a time (`start_draws`), always in this size."""


def start_draws(seed: int, n: int, chunk: int = START_DRAWS) -> Iterator[NDArray[np.int64]]:
    """The uniform draws in [0, n) that place the episodes of a task that starts anywhere,
    `chunk` at a time from one generator seeded by the run's seed: episode e takes draw e,
    so the draws do not depend on how many episodes are asked for at once (the tasks'
    `starts`, and the audit re-deriving them)."""
    rng = np.random.default_rng(seed)
    while True:
        yield rng.integers(0, n, size=chunk, dtype=np.int64)


TaskFactory = Callable[[int, float], Task]
"""Makes a task from the run's seed (where its episodes start) and discount (inside options)."""


def _tabular(cls: type[Task]) -> TaskFactory:
    return lambda seed, gamma: cls()


def _mental_rotation(split: str) -> TaskFactory:
    def make(seed: int, gamma: float) -> Task:
        from market.mental_rotation import MentalRotation  # torch: loaded only when asked for

        task: Task = MentalRotation(seed=seed, split=split)
        return task

    return make


def _two_rooms(goal: str) -> TaskFactory:
    def make(seed: int, gamma: float) -> Task:
        from market.two_rooms import TwoRooms  # MiniGrid and torch: loaded only when asked for

        task: Task = TwoRooms(goal=goal, seed=seed, gamma=gamma)
        return task

    return make


TABULAR_TASKS = frozenset({"bandit", "chain", "duality"})
"""The tasks with Q* tables (made without loading anything)."""
MENTAL_ROTATION = {"mental-rotation": "train", "mental-rotation-test": "test"}
"""Mental Rotation's tasks: each name's split of the digits."""
TWO_ROOMS = {"tworooms": "green", "tworooms-blue": "blue"}
"""Two Rooms' tasks: each name's goal."""
TASKS: dict[str, TaskFactory] = {
    "bandit": _tabular(Bandit),
    "chain": _tabular(Chain),
    "duality": _tabular(Duality),
    **{name: _mental_rotation(split) for name, split in MENTAL_ROTATION.items()},
    **{name: _two_rooms(goal) for name, goal in TWO_ROOMS.items()},
}
"""Every task by name: `tworooms` pretrains on the green goal, `tworooms-blue` is the transfer;
`mental-rotation-test` draws its inputs from the held-out digits."""
ABOUT: dict[str, str] = {
    "bandit": "one state, four arms paying 0.2-0.8 (Q* known)",
    "chain": "six states in a row; R to the end pays 0.8 (Q* known)",
    "duality": "two states and an absorbing one; alternating pays 0.5 a step (Q* known)",
    "mental-rotation": "rotate and translate a digit image in two steps; pays 1 if it is read",
    "mental-rotation-test": "Mental Rotation on the held-out digits",
    "tworooms": "MiniGrid's two rooms, trained options as primitives, green goal",
    "tworooms-blue": "Two Rooms with the blue goal (the transfer)",
}
"""Each built-in task in a few words (`market tasks`)."""


GYM = "gym:"
"""The prefix of a task named by its Gymnasium id (`gym:CartPole-v1`)."""


def built_in(task: str) -> bool:
    """Whether task name `task` is one of this package's own tasks' (`TASKS`), rather than a
    Gymnasium env's (`gym:ID`) or another package's (`PREFIX:NAME`)."""
    return ":" not in task


def gym_id(task: str) -> str | None:
    """The Gymnasium id a task name gives (`gym:ID`), or None."""
    return task[len(GYM) :] if task.startswith(GYM) else None


ENTRY_POINTS = "market.tasks"
"""The entry point group through which another package offers tasks: an entry `mypkg` whose
object is `make(name, seed, gamma) -> Task` makes `--task mypkg:NAME` (docs/gymnasium.md)."""


def make_task(
    name: str,
    seed: int = 0,
    gamma: float = 0.99,
    primitives: int | None = None,
    reward_scale: float | None = None,
    reward_offset: float | None = None,
) -> Task:
    """The task called `name` for a run of `seed` and discount `gamma` (Chain with
    `primitives` primitives, if given; a Gymnasium env's rewards plus `reward_offset` times
    `reward_scale`, each if given); a ValueError names the choices otherwise."""
    _rewards_fit(name, reward_scale, reward_offset)
    if (env := gym_id(name)) is not None:
        from market.gym_tasks import GymTask

        _no_primitives(name, primitives)
        return GymTask(env, seed, reward_scale, reward_offset)
    if not built_in(name):
        _no_primitives(name, primitives)
        return _offered(name, seed, gamma)
    check_task(name, primitives)
    return Chain(primitives) if primitives is not None else TASKS[name](seed, gamma)


def check_task(
    name: str,
    primitives: int | None = None,
    reward_scale: float | None = None,
    reward_offset: float | None = None,
) -> None:
    """A one-line ValueError unless `name` is a task (taking `primitives`, if given); loads
    nothing for the built-in tasks (a task over images reads its data only when made); a
    Gymnasium env or another package's task is made once to see that it fits."""
    _rewards_fit(name, reward_scale, reward_offset)
    if not built_in(name):
        make_task(name, primitives=primitives, reward_scale=reward_scale,
                  reward_offset=reward_offset)  # fmt: skip
        return
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; choose one of: {', '.join(TASKS)}, or gym:ID for a "
            "Gymnasium env (`market tasks`)"
        )
    _no_primitives(name, primitives)


def _rewards_fit(name: str, reward_scale: float | None, reward_offset: float | None) -> None:
    for flag, value in (("--reward-scale", reward_scale), ("--reward-offset", reward_offset)):
        if value is not None and gym_id(name) is None:
            raise ValueError(f"{flag} is for Gymnasium tasks (--task gym:ID)")


def _no_primitives(name: str, primitives: int | None) -> None:
    if primitives is not None and name != "chain":
        raise ValueError(f"--primitives sets Chain's society; task {name!r} has its own")


def offered() -> dict[str, str]:
    """Every package's entry in `ENTRY_POINTS`: its prefix -> where it points."""
    from importlib.metadata import entry_points

    return {e.name: e.value for e in entry_points(group=ENTRY_POINTS)}


def _offered(name: str, seed: int, gamma: float) -> Task:
    """Task `PREFIX:NAME` made by the package registered as PREFIX in `ENTRY_POINTS`."""
    from importlib.metadata import entry_points

    prefix, _, rest = name.partition(":")
    found = [e for e in entry_points(group=ENTRY_POINTS) if e.name == prefix]
    if not found:
        known = ", ".join(["gym", *sorted(offered())])
        raise ValueError(
            f"unknown task {name!r}: no package offers tasks as {prefix!r} (known: {known}); "
            f"a package offers them through the {ENTRY_POINTS!r} entry point group"
        )
    try:
        make = found[0].load()
        task = make(rest, seed, gamma)
    except ValueError:
        raise
    except Exception as e:  # another package's code: its failure, said in one line
        raise ValueError(
            f"task {name!r}: {found[0].value} failed ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(task, Task):
        raise ValueError(
            f"task {name!r}: {found[0].value} gave a {type(task).__name__}, not a Task"
        )
    task.name = name  # what the ledger and the audit know it by
    return task
