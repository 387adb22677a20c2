"""The audit re-derives the world: every transformation, reward and duration from the task
the run's configuration names, and every field a result is computed from.

Rules (names as the audit reports them; `market.audit` runs them on each chunk after its own):
  transition     a transformation starts from its episode's current state (the episode's
                 start at step 0, else the last next state), is the auction's (its state,
                 winner and the winner's primitive, the one the winner's account is named
                 after), and ends where the task says (next state and done); an episode ends
                 exactly with the transformation that ends it (done, or the horizon's last
                 step). A control step starts from the
                 episode's current state (at step 0 the start drawn from the run's seed), its
                 controls are its orders' (each the task's control for its action, the
                 agents in order), and its next state is the task's f(x, u), to the bit
  reward-value   a reward is the task's for the transformation, in units (a control step's:
                 each agent's own g_i(x, u))
  duration       a transformation takes the task's duration (env steps of an option)
  episode-start  an EpisodeStart names its run's mechanism, cloning and discount, and its
                 state is the task's start for its number (drawn from the run's seed where
                 episodes start anywhere)
  episode-order  episodes are numbered in the order they start (each EpisodeStart's number
                 above every earlier one), and no more are open at once than the run's
                 concurrency (at concurrency 1 episodes never interleave)
  run-start      a RunStart's seed is its configuration's
  run-end        (besides the audit's count of the episodes ended) every episode a run
                 started has ended by its RunEnd, and the run ended no more episodes than its
                 budget (exactly that many when the budget is episodes alone, without an
                 economy, which may stop early)
A Gymnasium task (`gym:ID`) is re-stepped: each episode's env reset from the episode's seed
and stepped with its winners' actions in the ledger's order (`market.gym_tasks.Stepper`).
`EpisodeEnd.steps` and `episode_return` are the audit's `episode-end` rule (its steps are its
auctions, its return their signed rewards), so with `reward-value` a return is re-derived
too.

What is not re-derived, and why, is listed in the report (`AuditReport.not_rederived`):
Mental Rotation's second-step reward (a trained classifier's reading of a rendered image),
Two Rooms' next states (where the trained options take the agent: only checked to be a state
an option stops at), a task that is not the one the configuration names (a `Task` given to
`simulate` directly), and runs whose RunStart holds no configuration this engine writes.

Speed: per chunk, one query per kind of event read (on the audit's reading thread), binary
searches on the transactions' numbers in place of joins, one linear sort of the episode
numbers, and the task looked up as arrays: a tabular task's transition table indexed by
(state, primitive), NumPy arithmetic on ids for the tasks over images, f and g over every
control step at once; no Python loop over events. Carried between chunks: the run's world,
each open episode's current state and the run's counts, nothing that grows with the ledger.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import polars as pl
from numpy.typing import NDArray
from pydantic import ValidationError

from ledger import schema
from ledger.events import CONTROL, ENVIRONMENT
from ledger.units import UNIT, to_units, to_units_array
from market.tasks import (
    GYM,
    MENTAL_ROTATION,
    START_DRAWS,
    TABULAR_TASKS,
    TWO_ROOMS,
    Task,
    gym_id,
    make_task,
    start_draws,
)

if TYPE_CHECKING:
    from market.control import ControlRunConfig
    from market.control_tasks import ControlTask
    from market.run import RunConfig

_C = pl.col
COLUMNS = [
    "primitive", "state", "next_state", "duration", "done", "task", "cloned", "gamma", "seed",
    "config", "action", "control", "x", "controls", "next_x", "obs",
]  # fmt: skip
"""The columns the world rules read besides those of the audit's own rules."""
READS = {
    "run_start": ["seq", "seed", "config"],
    "run_end": ["seq", "kind", "episode", "episodes"],
    "episode_start": [
        "seq", "kind", "episode", "episodes", "state", "task", "mechanism", "cloned", "gamma",
        "obs",
    ],
    "episode_end": ["seq", "kind", "tx", "episode", "episodes"],
    "allocate": ["seq", "tx", "account", "primitive", "state"],
    "transform": [
        "seq", "tx", "episode", "step", "account", "primitive", "state", "next_state",
        "duration", "done", "obs",
    ],
    "reward": ["seq", "tx", "src", "dst", "amount"],
    "order": ["seq", "tx", "account", "primitive", "action", "control"],
    "transition": ["seq", "tx", "episode", "step", "x", "controls", "next_x", "done"],
}  # fmt: skip
"""The kinds of event the world rules read, and of each the columns."""
Parts = dict[str, pl.DataFrame]
"""A chunk's rows the world rules read, by kind (`prepare`)."""
DTYPES: dict[str, pl.DataType] = {
    name: dtype
    for name, dtype in pl.DataFrame(schema.SCHEMA.empty_table()).schema.items()
    if name in COLUMNS
}
"""Their types in the ledger's table (a frame without them reads them as null)."""
WORLD_RULES = ("transition", "reward-value", "duration", "episode-start")
"""The rules that need the task the configuration names."""
MAX_DRAWS = 1 << 32
"""Episode numbers whose drawn start the audit re-derives (drawing up to one costs seconds)."""


class Finding(NamedTuple):
    """A broken rule: where, which, what was expected and what was found."""

    seq: int
    rule: str
    expected: str
    found: str


def prepare(df: pl.DataFrame) -> Parts:
    """The rows and columns of a chunk the world rules read, by kind (on the audit's
    reading thread).

    Speed: one query per kind that reads only its columns, run together (`collect_all`): a
    filter of the whole chunk copies every column of the rows it keeps."""
    events = df.lazy()
    wanted = [events.filter(_C("kind") == k).select(c) for k, c in READS.items()]
    parts = dict(zip(READS, pl.collect_all(wanted), strict=True))
    parts["transform"] = _sales(parts)
    return parts


def _sales(parts: Parts) -> pl.DataFrame:
    """Each transformation (nulls as -1) with what its transaction recorded besides it, row
    for row: `sold`, whether its Allocate names the same winner, primitive and state; `r`,
    its Reward, signed (from the environment +); `r_at`, the reward's seq (-1: none);
    `ended`, whether an EpisodeEnd is in the transaction. None of it needs the task, so it
    is made on the reading thread."""
    steps = parts["transform"].with_columns(
        _C("state", "primitive", "next_state", "step").fill_null(-1),
        _C("done").fill_null(False),
        _C("duration").fill_null(np.nan),
        _C("next_state").fill_null(-1).alias("nxt"),
    )
    tx = steps["tx"].to_numpy()
    sold = parts["allocate"].select("tx", _C("state", "primitive").fill_null(-2), "account")
    signed = pl.when(_C("src") == ENVIRONMENT).then(_C("amount")).otherwise(-_C("amount"))
    rewards = parts["reward"].select("tx", "seq", signed.fill_null(0).alias("r"))
    at_sale = _rows(tx, sold["tx"].to_numpy())
    at_reward = _rows(tx, rewards["tx"].to_numpy())
    winners = sold["account"]
    if not at_sale.same:
        winners = winners.gather(np.maximum(at_sale.at, 0)) if sold.height else steps["account"]
    same = (
        at_sale.hit()
        & (at_sale.take(sold["state"].to_numpy(), -2) == steps["state"].to_numpy())
        & (at_sale.take(sold["primitive"].to_numpy(), -2) == steps["primitive"].to_numpy())
        & (winners == steps["account"]).fill_null(False).to_numpy()
    )
    return steps.with_columns(
        pl.Series("sold", same, dtype=pl.Boolean),
        pl.Series("r", at_reward.take(rewards["r"].to_numpy(), 0), dtype=pl.Int64),
        pl.Series("r_at", at_reward.take(rewards["seq"].to_numpy(), -1), dtype=pl.Int64),
        pl.Series(
            "ended", _rows(tx, parts["episode_end"]["tx"].to_numpy()).hit(), dtype=pl.Boolean
        ),
    )


# --- what a run's configuration makes of the world --------------------------------------------


class Expected(NamedTuple):
    """What the task says of transformations (arrays in their order)."""

    valid: NDArray[np.bool_]
    """Whether the state and primitive (and, where read, the next state) are the task's."""
    next_state: NDArray[np.int64]
    """The next state (-1: none the recorded one could be; `next_any`)."""
    done: NDArray[np.bool_]
    duration: NDArray[np.float64]
    reward: NDArray[np.int64]
    """In units."""
    reward_any: NDArray[np.bool_] | None = None
    """Where set, the reward is not re-derived: 0 or 1 credit will do."""
    obs: NDArray[np.float32] | None = None
    """What the task observed of each next state, as the ledger records it (`Task.recorded`);
    None for a task whose states are their own record."""


class AuctionWorld:
    """An auction task as the audit re-derives it."""

    name: str = ""
    horizon: int = 1
    primitives: tuple[str, ...] = ()
    """The primitives' names: an account is named after the one it runs (`R.0`, `R.1`)."""
    unchecked: dict[str, str]
    """Rule -> why it is not (fully) re-derived for this task."""
    next_any: str = ""
    """What a next state must be, where the task does not say which (`Expected.next_state`
    -1)."""

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        """The start state of each episode (numbers in increasing order)."""
        raise NotImplementedError

    def runs(self, accounts: list[str | None]) -> NDArray[np.int64]:
        """The primitive each account runs, by its name (-1: no primitive's name)."""
        number = {name: i for i, name in enumerate(self.primitives)}
        return np.array(
            [-1 if a is None else number.get(a.rpartition(".")[0], -1) for a in accounts],
            dtype=np.int64,
        )

    def expect(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64], nxt: NDArray[np.int64]
    ) -> Expected:
        """What the task says of each (state, primitive) transformation (recorded `nxt`)."""
        raise NotImplementedError

    def observed(self, episodes: NDArray[np.int64]) -> NDArray[np.float32] | None:
        """What the task observed of each episode's start, as the ledger records it; None
        for a task whose states are their own record."""
        return None


class _Tabular(AuctionWorld):
    """A tabular task: its transition table, indexed by (state, primitive)."""

    def __init__(self, task: Task) -> None:
        self.name, self.horizon, self.unchecked = task.name, task.horizon, {}
        self.primitives, self._task = task.primitive_names, task
        t = task.tables()
        self._next, self._done, self._duration = t.next_state, t.done, t.duration
        self._reward = to_units_array(t.reward)

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        return self._task.starts(episodes)

    def expect(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64], nxt: NDArray[np.int64]
    ) -> Expected:
        n, m = self._next.shape
        valid = (states >= 0) & (states < n) & (primitives >= 0) & (primitives < m)
        cell = np.where(valid, states * m + primitives, 0)  # the table's (state, primitive)
        return Expected(
            valid,
            self._next.ravel()[cell],
            self._done.ravel()[cell],
            self._duration.ravel()[cell],
            self._reward.ravel()[cell],
        )


class _Draws:
    """The start draws of episodes asked for in increasing order (`start_draws`), keeping
    only the chunk of draws the latest request needs."""

    def __init__(self, seed: int, n: int) -> None:
        self.seed, self.n = seed, n
        self._restart()

    def _restart(self) -> None:
        self._source = start_draws(self.seed, self.n)
        self._base, self._kept = 0, np.empty(0, dtype=np.int64)

    def of(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        """Each episode's draw (every number in [0, MAX_DRAWS))."""
        if not len(episodes):
            return np.empty(0, dtype=np.int64)
        low, high = int(episodes.min()), int(episodes.max())
        if low < self._base:  # asked out of order (an `episode-order` violation): redraw
            self._restart()
        end = self._base + len(self._kept)
        while end <= high:
            more = next(self._source)
            if end + len(more) <= low:  # every draw kept so far and these lie below
                self._base, self._kept = end + len(more), np.empty(0, dtype=np.int64)
            else:
                self._kept = np.concatenate([self._kept, more])
            end += len(more)
        out = self._kept[episodes - self._base]
        drop = (low - self._base) // START_DRAWS * START_DRAWS
        self._base, self._kept = self._base + drop, self._kept[drop:]
        return out


class _MentalRotation(AuctionWorld):
    """Mental Rotation: moves are arithmetic on ids; the second step's reward is the
    classifier's, not re-derived."""

    def __init__(self, name: str, seed: int) -> None:
        from market.digits import load_digits
        from market.mental_rotation import KINDS as INPUT_KINDS
        from market.mental_rotation import (
            NODES,
            PRIMITIVES,
            MentalRotation,
            moves,
            split_inputs,
        )

        digits = load_digits()
        self.name, self.horizon = name, MentalRotation.horizon
        self.primitives = PRIMITIVES
        self._inputs = split_inputs(digits, MENTAL_ROTATION[name])
        self._nodes, self._primitives, self._moves = NODES, len(PRIMITIVES), moves
        self._n_states = len(digits.labels) * len(INPUT_KINDS) * NODES
        self._draws = _Draws(seed, len(self._inputs))
        self.unchecked = {
            "reward-value": f"{name}: a second step's reward is the trained digit classifier's "
            "reading of a rendered image (a model outside the ledger and its configuration); "
            "checked to be 0 or 1 credit"
        }

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.asarray(self._inputs[self._draws.of(episodes)] * self._nodes, dtype=np.int64)

    def expect(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64], nxt: NDArray[np.int64]
    ) -> Expected:
        valid = (states >= 0) & (states < self._n_states)
        valid &= (primitives >= 0) & (primitives < self._primitives)
        s, p = np.where(valid, states, 0), np.where(valid, primitives, 0)
        moved, done, finishing = self._moves(s, p)
        reward = np.zeros(len(s), dtype=np.int64)
        return Expected(valid, moved, done, np.ones(len(s)), reward, finishing)


class _TwoRooms(AuctionWorld):
    """Two Rooms: an option's duration and reward are read off the state ids (its env step
    count, the goal it reached); where it went is the options' choice, checked only to be a
    state it stops at."""

    next_any = "a state where the option stops (its end, the episode's, or its step cap)"

    def __init__(self, name: str, seed: int, gamma: float) -> None:
        from market import two_rooms

        self.name, self.horizon, self._gamma = name, two_rooms.HORIZON, gamma
        self.primitives = two_rooms.OPTION_NAMES
        self._goal = TWO_ROOMS[name]
        self._room1 = two_rooms.room1_states()
        self._draws = _Draws(seed, len(self._room1))
        self._rooms = two_rooms
        self.unchecked = {
            "transition": f"{name}: where an option takes the agent is the trained options' "
            "choice (networks outside the ledger and its configuration); checked to be a state "
            "where the option stops"
        }

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.asarray(self._room1[self._draws.of(episodes)], dtype=np.int64)

    def expect(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64], nxt: NDArray[np.int64]
    ) -> Expected:
        rooms, n = self._rooms, self._rooms.N_STATES
        valid = (states >= 0) & (states < n) & (nxt >= 0) & (nxt < n)
        valid &= (primitives >= 0) & (primitives < len(rooms.OPTION_NAMES))
        s, p, x = (np.where(valid, a, 0) for a in (states, primitives, nxt))
        steps = rooms.decode(x).t - rooms.decode(s).t
        stopped = rooms.option_stopped(s, p, x)
        reward = rooms.option_reward(x, np.maximum(steps, 0), self._goal, self._gamma)
        return Expected(
            valid,
            np.where(stopped, x, -1),
            rooms.episode_over(x),
            steps.astype(np.float64),
            to_units_array(reward),
        )


class _Gym(AuctionWorld):
    """A Gymnasium env, re-stepped: each episode's env reset from the episode's seed when its
    first transformation is read, then stepped with each winner's primitive in the ledger's
    order; its reward, termination and next id must be the recorded ones. Memory: one env
    per episode in flight."""

    def __init__(
        self, name: str, seed: int, reward_scale: float | None, reward_offset: float | None
    ) -> None:
        from market.gym_tasks import GymTask, make_env

        task = GymTask(name[len(GYM) :], seed, reward_scale, reward_offset)
        self.name, self.horizon, self.primitives = name, task.horizon, task.primitive_names
        self.unchecked = {}
        self._task, self._span = task, task.span
        self._stepper = task.stepper
        self._env = make_env(name[len(GYM) :])
        """Resets to each episode's start, to observe it (`observed`)."""

    def observed(self, episodes: NDArray[np.int64]) -> NDArray[np.float32]:
        from market.gym_tasks import episode_seed, flat

        out = np.zeros((len(episodes), self._task.record_width), dtype=np.float32)
        for i, episode in enumerate(episodes.tolist()):
            out[i] = flat(self._env.reset(seed=episode_seed(self._task.seed, episode))[0])
        return out

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.asarray(episodes, dtype=np.int64) * self._span

    def expect(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64], nxt: NDArray[np.int64]
    ) -> Expected:
        from market.gym_tasks import GymTaskError, flat

        n = len(states)
        valid, done = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        reward = np.zeros(n, dtype=np.int64)
        obs = np.zeros((n, self._task.record_width), dtype=np.float32)
        stepper, actions = self._stepper, len(self.primitives)
        for i, (state, primitive) in enumerate(
            zip(states.tolist(), primitives.tolist(), strict=True)
        ):
            episode, t = divmod(state, self._span)
            if t == 0 and stepper.at(episode) is None and state >= 0:
                stepper.begin(episode)
            if stepper.at(episode) != t or not 0 <= primitive < actions:
                continue  # not where its episode stands: the transition rule says so
            try:
                seen, r, terminated, _ = stepper.step(episode, primitive)
            except GymTaskError:
                continue
            valid[i], done[i], obs[i] = True, terminated, flat(seen)
            reward[i] = to_units(self._task.credit(r))
        nxt = np.asarray(states, dtype=np.int64) + 1
        return Expected(valid, nxt, done, np.ones(n), reward, obs=obs)


class _Control:
    """A control task: f and g, the control set, and the run's generator of starts."""

    def __init__(self, config: ControlRunConfig) -> None:
        from market.control import control_task_of, reset_rng

        self.task: ControlTask = control_task_of(config)
        self.name, self.horizon = config.task, self.task.horizon
        self.unchecked: dict[str, str] = {}
        self.accounts = config.accounts
        self._rng = reset_rng(config.seed)

    def start(self) -> list[float]:
        """The next episode's start (the kernel draws one per episode, in their order)."""
        return [float(v) for v in self.task.reset(self._rng, 1)[0]]


World = AuctionWorld | _Control


def configured(text: str | None) -> RunConfig | ControlRunConfig | None:
    """The configuration a RunStart holds, if this engine wrote it (it reads back to the same
    JSON); None for anything else (a hand-made ledger's, whose partial configuration would
    otherwise be read with every default filled in, or an older engine's)."""
    from market.control import ControlRunConfig
    from market.run import RunConfig

    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    model: type[RunConfig] | type[ControlRunConfig]
    model = ControlRunConfig if data.get("variant") == "control" else RunConfig
    try:
        config = model.model_validate(data)
    except ValidationError:
        return None
    return config if config.model_dump_json() == text else None


def world_of(config: RunConfig | ControlRunConfig) -> tuple[World | None, str]:
    """The world `config` names, or None and why the audit cannot make it."""
    from market.control import ControlRunConfig

    name = config.task
    try:
        if isinstance(config, ControlRunConfig):
            return _Control(config), ""
        if name in TABULAR_TASKS:
            return _Tabular(make_task(name, config.seed, config.gamma, config.primitives)), ""
        if name in MENTAL_ROTATION:
            return _MentalRotation(name, config.seed), ""
        if name in TWO_ROOMS:
            return _TwoRooms(name, config.seed, config.gamma), ""
        if gym_id(name) is not None:
            return _Gym(name, config.seed, config.reward_scale, config.reward_offset), ""
    except (ValueError, ImportError, OSError) as e:
        return None, f"task {name!r} cannot be made ({e})"
    return None, f"task {name!r} is not one the audit can make"


# --- the carry ----------------------------------------------------------------------------------

_STATES: dict[str, pl.DataType] = {
    "episode": pl.Int64(),
    "cur": pl.Int64(),
    "foreign": pl.Boolean(),
}
_POINTS: dict[str, pl.DataType] = {
    "episode": pl.Int64(), "cur": pl.List(pl.Float64()), "foreign": pl.Boolean()
}  # fmt: skip


_REASONS = 4
"""Reasons kept a rule, at most (then "and more")."""


@dataclass
class Carry:
    """What the world rules hand from one chunk to the next: the run in force and its
    world, each open episode's current state, the run's counts; nothing that grows with the
    ledger."""

    config: RunConfig | ControlRunConfig | None = None
    """The run's configuration, None if its RunStart holds none the engine wrote."""
    world: World | None = None
    states: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_STATES))
    """Per open episode: where it stands (the next transformation's state; a control
    episode's state vector), and whether it is of another task than the configuration's."""
    last_started: int | None = None
    """The number of the last episode started in the ledger."""
    open: int = 0
    """Episodes the run started and has not ended."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Rule -> why it was not (fully) re-derived, for some run or episode."""
    runs: int = 0
    """RunStarts read so far."""

    def skip(self, rules: Iterable[str], why: str) -> None:
        """Say why `rules` were not (fully) re-derived somewhere (a few reasons a rule, so
        that a ledger of many odd runs does not grow the report)."""
        for rule in rules:
            reasons = self.skipped.setdefault(rule, [])
            if why not in reasons and len(reasons) < _REASONS:
                reasons.append(why)
            elif why not in reasons and reasons[-1] != "and more":
                reasons.append("and more")

    def not_rederived(self) -> dict[str, str]:
        """Rule -> why, for the report."""
        return {rule: "; ".join(why) for rule, why in self.skipped.items()}

    def start_run(self, seq: int, seed: int | None, text: str | None) -> Finding | None:
        """A RunStart: the world its configuration names; the run's counts start over."""
        self.open, self.runs = 0, self.runs + 1
        self.config = configured(text)
        self.world = None
        if self.config is None:
            why = (
                "a run whose RunStart holds no configuration this engine writes (a hand-made "
                "ledger's, or an older engine's)"
            )
            self.skip((*WORLD_RULES, "run-start", "run-end"), why)
            self.states = self.states.clear()
            return None
        self.world, why = world_of(self.config)
        if self.world is None:
            self.skip(WORLD_RULES, why)
        else:
            for rule, reason in self.world.unchecked.items():
                self.skip((rule,), reason)
        schema = _POINTS if isinstance(self.world, _Control) else _STATES
        self.states = pl.DataFrame(schema=schema)
        if seed != self.config.seed:
            return Finding(seq, "run-start", f"seed {self.config.seed}", f"seed {seed}")
        return None


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class _Check:
    """One way a rule breaks: on the rows where `bad` holds, reported at `at`."""

    rule: str
    bad: NDArray[np.bool_]
    at: NDArray[np.int64]
    says: Callable[[int], tuple[str, str]]
    """Row -> (expected, found)."""


def _ends_here(
    ok: NDArray[np.bool_],
    last: NDArray[np.bool_],
    ended: NDArray[np.bool_],
    seq: NDArray[np.int64],
    goes_on: str,
) -> _Check:
    """`transition`: a step's transaction holds its episode's end exactly when the step is
    the episode's last (`goes_on` says why the others are not)."""
    return _Check(
        "transition",
        ok & (last != ended),
        seq,
        lambda i: (
            "the episode's end in this transaction" if last[i] else goes_on,
            "an EpisodeEnd" if ended[i] else "none",
        ),
    )


def _first(checks: list[_Check]) -> Finding | None:
    """The first broken check, by seq (ties: the one listed first)."""
    best: tuple[int, int, int] | None = None
    for k, c in enumerate(checks):
        rows = np.flatnonzero(c.bad)
        if len(rows):
            i = int(rows[np.argmin(c.at[rows])])
            if best is None or (int(c.at[i]), k) < best[:2]:
                best = (int(c.at[i]), k, i)
    if best is None:
        return None
    seq, k, i = best
    expected, found = checks[k].says(i)
    return Finding(seq, checks[k].rule, expected, found)


def check(parts: Parts, carry: Carry) -> Finding | None:
    """The first world rule broken in a chunk (its `prepare`d rows, whole transactions),
    given what `carry` holds; `carry` is updated for the next chunk."""
    found: list[Finding] = []
    runs = parts["run_start"]
    cuts = [-1, *runs["seq"].to_list(), 2**63 - 1]  # a RunStart starts a run's rows
    for i, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        piece = parts
        if runs.height:
            piece = {k: _between(f, lo, hi) for k, f in parts.items()}
        if i > 0:
            seq, seed, text = runs.row(i - 1)
            if (began := carry.start_run(seq, seed, text)) is not None:
                found.append(began)
        found += _piece(piece, carry)
    return min(found, default=None)


def _between(frame: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    """The rows of `frame` (in seq order) with lo <= seq < hi."""
    seq = frame["seq"]
    start, end = seq.search_sorted(lo, "left"), seq.search_sorted(hi, "left")
    return frame.slice(int(start), int(end) - int(start))


class _Kinds:
    """A run's rows of a chunk, by kind."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    def of(self, *kinds: str) -> pl.DataFrame:
        """The rows of `kinds` (one kind's columns, or the columns all share), in seq order."""
        if len(kinds) == 1:
            return self._parts[kinds[0]]
        return pl.concat([self._parts[k] for k in kinds], how="diagonal_relaxed").sort("seq")


def _piece(parts: Parts, carry: Carry) -> list[Finding]:
    """The checks of one run's rows of a chunk."""
    piece = _Kinds(parts)
    starts = piece.of("episode_start").select(
        "seq", "episode", "state", "task", "mechanism", "cloned", "gamma", "obs"
    )
    ends = piece.of("episode_end").select("seq", "tx", "episode")
    out = [_order(piece, carry)]
    if not carry.runs and (starts.height or piece.of("transform").height):
        carry.skip(WORLD_RULES, "events before any RunStart")
    world, config = carry.world, carry.config
    foreign = pl.lit(False)
    if config is not None:
        foreign = _C("task") != config.task
        strangers = starts.filter(foreign)["task"].unique().sort().to_list()
        for task in strangers:
            carry.skip(
                WORLD_RULES,
                f"episodes of task {task!r}, which the run's configuration ({config.task!r}) "
                "does not name (a task given to simulate() directly)",
            )
    starts = starts.with_columns(foreign.alias("foreign"))
    if isinstance(world, _Control):
        out += _control(piece, starts, ends, world, carry)
    elif world is not None:
        out += _auctions(piece, starts, ends, world, carry)
    if config is not None:
        out.append(_episode_starts(starts, config, world))
    return [f for f in out if f is not None]


def _order(piece: _Kinds, carry: Carry) -> Finding | None:
    """`episode-order`, and `run-end`'s count of open episodes and budget."""
    marks = piece.of("episode_start", "episode_end", "run_end").select(
        "seq", "kind", "episode", "episodes"
    )
    if marks.is_empty():
        return None
    seq = marks["seq"].to_numpy()
    is_start = (marks["kind"] == "episode_start").to_numpy()
    is_end = (marks["kind"] == "run_end").to_numpy()
    opened = carry.open + np.cumsum(is_start.astype(np.int64) - (~is_start & ~is_end))
    numbers = marks["episode"].fill_null(-1).to_numpy()[is_start]
    before = np.r_[-1 if carry.last_started is None else carry.last_started, numbers[:-1]]
    checks = [
        _Check(
            "episode-order",
            numbers <= before,
            seq[is_start],
            lambda i: (f"an episode numbered above {before[i]}", f"episode {numbers[i]}"),
        )
    ]
    if carry.config is not None:
        checks += _configured_order(marks, is_start, is_end, opened, carry.config)
    checks.append(
        _Check(
            "run-end",
            is_end & (opened != 0),
            seq,
            lambda i: ("every episode the run started ended", f"{opened[i]} still open"),
        )
    )
    if len(numbers):
        top = int(numbers.max())
        carry.last_started = top if carry.last_started is None else max(carry.last_started, top)
    carry.open = int(opened[-1])
    if is_end.any():
        carry.open = 0  # a closed run: a RunEnd with episodes open is its violation
    return _first(checks)


def _configured_order(
    marks: pl.DataFrame,
    is_start: NDArray[np.bool_],
    is_end: NDArray[np.bool_],
    opened: NDArray[np.int64],
    config: RunConfig | ControlRunConfig,
) -> list[_Check]:
    """`episode-order` against the run's concurrency, `run-end` against its budget."""
    seq, most = marks["seq"].to_numpy(), config.concurrency
    told = marks["episodes"].fill_null(-1).to_numpy()
    budget = config.episodes
    economy = getattr(config, "economy", None)
    exact = budget is not None and config.steps is None and economy is None
    over = told > budget if budget is not None else np.zeros(len(told), dtype=bool)
    wrong = over | (exact & (told != budget))
    return [
        _Check(
            "episode-order",
            is_start & (opened > most),
            seq,
            lambda i: (
                f"at most {most} episodes open at once (the run's concurrency)",
                f"{opened[i]} with episode {marks['episode'][i]}",
            ),
        ),
        _Check(
            "run-end",
            is_end & wrong,
            seq,
            lambda i: (
                f"{'exactly' if exact else 'at most'} {budget} episodes (the run's budget)",
                f"{told[i]}",
            ),
        ),
    ]


def _episode_starts(
    starts: pl.DataFrame, config: RunConfig | ControlRunConfig, world: World | None
) -> Finding | None:
    """`episode-start`: each EpisodeStart against the run's configuration and, for an
    episode of the configuration's task, its start state against the task's."""
    from market.control import ControlRunConfig

    if starts.is_empty():
        return None
    control = isinstance(config, ControlRunConfig)
    mechanism = CONTROL if isinstance(config, ControlRunConfig) else config.mechanism.value
    told = (
        (_C("mechanism") == mechanism)
        & (_C("gamma") == config.gamma)
        & (pl.lit(True) if isinstance(config, ControlRunConfig) else _C("cloned") == config.cloned)
    ).fill_null(False)
    rows = starts.with_columns(told.alias("told"))
    seq = rows["seq"].to_numpy()
    checks = [
        _Check(
            "episode-start",
            ~rows["told"].to_numpy(),
            seq,
            lambda i: (
                f"mechanism {mechanism}, discount {config.gamma}"
                + ("" if control else f", cloned {getattr(config, 'cloned', None)}"),
                "mechanism {}, discount {}, cloned {}".format(
                    *rows.select("mechanism", "gamma", "cloned").row(i)
                ),
            ),
        )
    ]
    if isinstance(world, AuctionWorld):
        numbers = rows["episode"].fill_null(-1).to_numpy()
        state = rows["state"].fill_null(-1).to_numpy()
        mine = ~rows["foreign"].to_numpy() & (numbers >= 0) & (numbers < MAX_DRAWS)
        want = np.full(len(numbers), -1, dtype=np.int64)
        want[mine] = world.starts(numbers[mine])
        checks.append(
            _Check(
                "episode-start",
                ~rows["foreign"].to_numpy() & (state != want),
                seq,
                lambda i: (
                    f"state {want[i]} ({world.name}'s start for episode {numbers[i]})"
                    if want[i] >= 0
                    else f"an episode number in [0, {MAX_DRAWS})",
                    f"state {state[i]}",
                ),
            )
        )
        seen = world.observed(numbers[mine])
        if seen is not None:
            checks.append(_observations("episode-start", rows, mine, seen, "its start"))
    return _first(checks)


def _observations(
    rule: str, rows: pl.DataFrame, checked: NDArray[np.bool_], want: NDArray[np.float32],
    what: str,
) -> _Check:  # fmt: skip
    """`rule` on the `obs` of `rows` where `checked`: each the task's (`want`, one row per
    checked row), to the bit."""
    found = _matrix(rows["obs"].filter(pl.Series(checked)), want.shape[1])
    bad = np.zeros(rows.height, dtype=bool)
    bad[checked] = ~(found == want).all(axis=1)
    at = np.flatnonzero(checked)
    shown = {i: j for j, i in enumerate(at.tolist())}

    def said(i: int) -> tuple[str, str]:
        j = shown[i]
        recorded = None if rows["obs"][i] is None else found[j].tolist()
        return f"observation {want[j].tolist()} (what the task observed of {what})", (
            f"observation {recorded}"
        )

    return _Check(rule, bad, rows["seq"].to_numpy(), said)


def _matrix(column: pl.Series, width: int) -> NDArray[np.float32]:
    """A list column as rows of `width` values (NaN rows where one is null or of another
    length, so that they equal nothing)."""
    good = (column.list.len() == width).fill_null(False).to_numpy()
    out = np.full((len(column), width), np.nan, dtype=np.float32)
    if good.any():
        values = column.filter(pl.Series(good)).explode().to_numpy()
        out[good] = values.astype(np.float32).reshape(-1, width)
    return out


class _Rows(NamedTuple):
    """For each of some keys, the row of another column that holds it."""

    at: NDArray[np.int64]
    """The row (-1: none holds the key)."""
    same: bool
    """Whether the keys are that column, row for row (then `at` is 0, 1, 2, ...)."""

    def hit(self) -> NDArray[np.bool_]:
        """Whether a row holds each key."""
        return np.ones(len(self.at), dtype=bool) if self.same else self.at >= 0

    def take(self, values: NDArray[Any], missing: Any) -> NDArray[Any]:
        """`values` at each key's row, `missing` where there is none."""
        if self.same:
            return values
        if not len(values):
            return np.full(len(self.at), missing)
        return np.where(self.at >= 0, values[np.maximum(self.at, 0)], missing)


def _rows(keys: NDArray[np.int64], sorted_keys: NDArray[np.int64]) -> _Rows:
    """For each of `keys`, the first row of `sorted_keys` (ascending) that holds it.

    Speed: a binary search on the transactions' numbers, which a chunk's rows hold in
    order, in place of a hash join (or nothing: a chunk's transforms and allocates are
    usually the same transactions, row for row)."""
    if np.array_equal(keys, sorted_keys):
        return _Rows(np.arange(len(keys), dtype=np.int64), True)
    if not len(sorted_keys):
        return _Rows(np.full(len(keys), -1, dtype=np.int64), False)
    at = np.searchsorted(sorted_keys, keys)
    inside = at < len(sorted_keys)
    found = inside & (sorted_keys[np.where(inside, at, 0)] == keys)
    return _Rows(np.where(found, at, -1).astype(np.int64), False)


def _take(values: NDArray[Any], rows: NDArray[np.int64], missing: Any) -> NDArray[Any]:
    """`values[rows]`, `missing` where a row is -1."""
    return _Rows(rows, False).take(values, missing)


def _by_episode(episode: NDArray[np.int64], seq: NDArray[np.int64]) -> NDArray[np.int64]:
    """The rows in order of episode, then seq, for rows given as the carried ones, the
    starts and the steps, each kind in seq order (an episode's start precedes its steps).

    Speed: a chunk's episode numbers span a few thousand, so a stable sort of their offsets
    as 16-bit integers (a radix sort, linear) keeps each episode's rows in the order given,
    which is then seq order; about 20 times faster than sorting on both keys."""
    if not len(episode):
        return np.empty(0, dtype=np.int64)
    low, high = int(episode.min()), int(episode.max())
    if high - low < 1 << 16:
        return np.argsort((episode - low).astype(np.uint16), kind="stable")
    return np.lexsort((seq, episode))


class _Stand(NamedTuple):
    """Where each step's episode stood before it, and what to carry."""

    prev: NDArray[np.int64]
    """Per step: a row of `pool` (-1: not known, an episode not opened)."""
    pool: pl.Series
    """The carried states, the starts' and the steps' next states, in that order."""
    foreign: NDArray[np.bool_]
    """Per step: whether its episode is of another task than the configuration's."""
    carried: pl.DataFrame
    """Each episode still open after the steps: where it stands."""


def _stand(
    carried: pl.DataFrame, starts: pl.DataFrame, steps: pl.DataFrame, ends: pl.DataFrame
) -> _Stand:
    """Each step's state before it (the episode's previous step's `nxt`, its start's, or the
    one carried from the chunk before) and the states to carry (each open episode's last).

    Speed: one sort of the episode numbers (`_by_episode`), not of the rows."""
    episode = np.concatenate(
        [f["episode"].fill_null(-1).to_numpy() for f in (carried, starts, steps)]
    )
    seq = np.concatenate(
        [np.full(carried.height, -1), starts["seq"].to_numpy(), steps["seq"].to_numpy()]
    )
    pool = pl.concat([carried["cur"], starts["nxt"].rename("cur"), steps["nxt"].rename("cur")])
    order = _by_episode(episode, seq)
    e = episode[order]
    same = np.r_[False, e[1:] == e[:-1]]
    prev = np.empty(len(order), dtype=np.int64)
    prev[order] = np.where(same, np.r_[-1, order[:-1]], -1)
    last = order[np.r_[e[1:] != e[:-1], True]] if len(e) else order
    last = last[~np.isin(episode[last], ends["episode"].to_numpy())]
    strangers = np.concatenate(
        [f.filter(_C("foreign"))["episode"].to_numpy() for f in (carried, starts)]
    )
    held = pl.DataFrame(
        {
            "episode": episode[last],
            "cur": pool.gather(last),
            "foreign": np.isin(episode[last], strangers),
        },
        schema=carried.schema,
    )
    first = carried.height + starts.height
    foreign = (
        np.isin(episode[first:], strangers) if len(strangers) else np.zeros(steps.height, bool)
    )
    return _Stand(prev[first:], pool, foreign, held)


def _auctions(
    piece: _Kinds,
    starts: pl.DataFrame,
    ends: pl.DataFrame,
    world: AuctionWorld,
    carry: Carry,
) -> list[Finding | None]:
    """`transition`, `duration` and `reward-value` on a run's auctions."""
    steps = piece.of("transform")
    stand = _stand(carry.states, starts.with_columns(_C("state").alias("nxt")), steps, ends)
    carry.states = stand.carried
    if steps.is_empty():
        return []
    a = _Transforms.of(steps)
    want = world.expect(a.state, a.primitive, a.nxt)
    mine = ~stand.foreign
    ok = mine & want.valid
    checks = [*_winner_checks(piece, steps, a, stand, world), *_world_checks(a, want, mine, world)]
    if want.obs is not None:
        checks.append(_observations("transition", steps, ok, want.obs[ok], "its next state"))
    return [_first(checks)]


class _Transforms(NamedTuple):
    """A chunk's Transform rows as arrays, each with its auction's reward (`r`, at `r_at`)
    and whether its transaction ends the episode."""

    seq: NDArray[np.int64]
    state: NDArray[np.int64]
    primitive: NDArray[np.int64]
    nxt: NDArray[np.int64]
    step: NDArray[np.int64]
    done: NDArray[np.bool_]
    duration: NDArray[np.float64]
    sold: NDArray[np.bool_]
    r: NDArray[np.int64]
    r_at: NDArray[np.int64]
    ended: NDArray[np.bool_]

    @classmethod
    def of(cls, steps: pl.DataFrame) -> _Transforms:
        return cls(*(steps[c].to_numpy() for c in cls._fields))

    def told(self, i: int) -> str:
        return f"primitive {self.primitive[i]} on state {self.state[i]}"


def _winner_checks(
    piece: _Kinds, steps: pl.DataFrame, a: _Transforms, stand: _Stand, world: AuctionWorld
) -> list[_Check]:
    """`transition`: each step is its auction's winner running the primitive its account is
    named after, from where its episode stood."""
    mine = ~stand.foreign
    # Speed: the primitive each winner runs, by its name, read per (account, primitive) pair
    pairs = (
        (steps.filter(pl.Series(mine)) if stand.foreign.any() else steps)
        .group_by("account", "primitive")
        .agg(_C("seq").min())
    )
    paired = pairs["primitive"].to_numpy()
    runs = world.runs(pairs["account"].to_list())
    known = stand.prev >= 0
    prev = _take(stand.pool.fill_null(-1).to_numpy(), stand.prev, -1)

    def sold_said(i: int) -> tuple[str, str]:
        sold = piece.of("allocate").filter(_C("tx") == steps["tx"][i])
        if sold.is_empty():
            return "the auction's allocation", "none in the transaction"
        account, prim, at = sold.select("account", "primitive", "state").row(0)
        return (
            f"the auction's: {account} running primitive {prim} on state {at}",
            f"{steps['account'][i]} running {a.told(i)}",
        )

    return [
        _Check("transition", mine & ~a.sold, a.seq, sold_said),
        _Check(
            "transition",
            runs != paired,
            pairs["seq"].to_numpy(),
            lambda i: (
                f"primitive {runs[i]}, the one {pairs['account'][i]} runs"
                if runs[i] >= 0
                else f"a winner named after one of {world.name}'s primitives",
                f"primitive {paired[i]}",
            ),
        ),
        _Check(
            "transition",
            mine & known & (prev != a.state),
            a.seq,
            lambda i: (f"state {prev[i]} (where the episode stood)", f"state {a.state[i]}"),
        ),
    ]


_GOES_ON = "no end: the episode goes on (not done, before its horizon)"
"""Why an auction step that is not its episode's last holds no end."""


def _world_checks(
    a: _Transforms, want: Expected, mine: NDArray[np.bool_], world: AuctionWorld
) -> list[_Check]:
    """`transition`, `duration` and `reward-value`: each step of the run's own episodes
    (`mine`) goes where the task says, as fast, and is paid what it pays."""
    ok = mine & want.valid
    last = want.done | (a.step == world.horizon - 1)
    reward_bad = a.r != want.reward
    if want.reward_any is not None:
        reward_bad = np.where(want.reward_any, (a.r != 0) & (a.r != UNIT), reward_bad)

    def next_said(i: int) -> str:
        if want.next_state[i] < 0:
            return world.next_any
        return f"next state {want.next_state[i]} ({world.name}: {a.told(i)})"

    def reward_said(i: int) -> str:
        if want.reward_any is not None and want.reward_any[i]:
            return f"0 or {UNIT} units ({world.name}: {a.told(i)}, a reading of the classifier)"
        return f"{want.reward[i]} units ({world.name}: {a.told(i)})"

    return [
        _Check(
            "transition",
            mine & ~want.valid,
            a.seq,
            lambda i: (f"a state and primitive of {world.name}", f"{a.told(i)} to {a.nxt[i]}"),
        ),
        _Check(
            "transition",
            ok & (want.next_state != a.nxt),
            a.seq,
            lambda i: (next_said(i), f"next state {a.nxt[i]}"),
        ),
        _Check(
            "transition",
            ok & (want.done != a.done),
            a.seq,
            lambda i: (
                f"done {bool(want.done[i])} ({world.name}: {a.told(i)})",
                f"done {a.done[i]}",
            ),
        ),
        _ends_here(ok, last, a.ended, a.seq, _GOES_ON),
        _Check(
            "duration",
            ok & (a.duration != want.duration),
            a.seq,
            lambda i: (
                f"duration {want.duration[i]} ({world.name}: {a.told(i)})",
                f"duration {a.duration[i]}",
            ),
        ),
        _Check(
            "reward-value",
            ok & (a.r_at >= 0) & reward_bad,
            a.r_at,
            lambda i: (reward_said(i), f"{a.r[i]} units"),
        ),
    ]


def _control(
    piece: _Kinds,
    starts: pl.DataFrame,
    ends: pl.DataFrame,
    world: _Control,
    carry: Carry,
) -> list[Finding | None]:
    """`transition` and `reward-value` on a run's control steps."""
    d, n = world.task.state_dim, len(world.accounts)
    drawn = [world.start() for _ in range(starts.height)]  # one per episode, in their order
    starts = starts.with_columns(pl.Series("nxt", drawn, dtype=pl.List(pl.Float64)))
    steps = piece.of("transition").with_columns(_C("next_x").alias("nxt"))
    stand = _stand(carry.states, starts, steps, ends)
    carry.states = stand.carried
    if steps.is_empty():
        return []
    shaped = (
        (_C("x").list.len() == d) & (_C("next_x").list.len() == d)
        & (_C("controls").list.len() == n)
    ).fill_null(False)  # fmt: skip
    prev = stand.pool.gather(np.maximum(stand.prev, 0))
    fill = {"x": [0.0] * d, "next_x": [0.0] * d, "controls": [0.0] * n}
    arrays = steps.select(
        shaped.alias("shaped"),
        (_C("x") == prev).fill_null(False).alias("continues"),
        *(
            pl.when(shaped).then(_C(c)).otherwise(pl.lit(v)).list.to_array(len(v)).alias(c)
            for c, v in fill.items()
        ),
    )
    x, nx, u = (np.ascontiguousarray(arrays[c].to_numpy()) for c in ("x", "next_x", "controls"))
    ok = ~stand.foreign & arrays["shaped"].to_numpy()
    tx = steps["tx"].to_numpy()
    orders, paid = _orders(piece, steps, world), _rewards(piece, tx, world)
    units = to_units_array(world.task.g(x, u))
    counted = _counted(ok, orders, paid, steps["seq"].to_numpy(), n)
    moved = (world.task.f(x, u), nx)
    checks = [
        *_plant_checks(steps, arrays, moved, stand, prev, ok, ends, world, counted),
        _ordered(ok, orders),
        _paid(ok, paid, units, world),
    ]
    return [_first(checks)]


def _plant_checks(
    steps: pl.DataFrame,
    arrays: pl.DataFrame,
    moved: tuple[NDArray[np.float64], NDArray[np.float64]],
    stand: _Stand,
    prev: pl.Series,
    ok: NDArray[np.bool_],
    ends: pl.DataFrame,
    world: _Control,
    counted: _Check,
) -> list[_Check]:
    """`transition`: each step of the run's own episodes has the plant's shapes, starts where
    its episode stood, holds what `counted` checks, goes where f says (`moved`: f's next
    states and the recorded ones), and ends the episode exactly at the horizon."""
    d, n = world.task.state_dim, len(world.accounts)
    want, nx = moved
    seq, step = steps["seq"].to_numpy(), steps["step"].fill_null(-1).to_numpy()
    mine = ~stand.foreign
    continues = (stand.prev < 0) | arrays["continues"].to_numpy()
    done = steps["done"].fill_null(False).to_numpy()
    ended = _rows(steps["tx"].to_numpy(), ends["tx"].to_numpy()).hit()
    last = step == world.horizon - 1
    return [
        _Check(
            "transition",
            mine & ~ok,
            seq,
            lambda i: (f"a state of {d} numbers and {n} controls", "other shapes"),
        ),
        _Check(
            "transition",
            mine & ~continues,
            seq,
            lambda i: (
                f"x = {prev[i].to_list()} (where the episode stood)",
                f"x = {steps['x'][i].to_list()}",
            ),
        ),
        counted,
        _Check(
            "transition",
            ok & (want != nx).any(axis=1),
            seq,
            lambda i: (f"next x = {want[i].tolist()} ({world.name}'s f)", f"{nx[i].tolist()}"),
        ),
        _Check(
            "transition",
            ok & (done != last),
            seq,
            lambda i: (f"done {bool(last[i])} (step {step[i]} of {world.horizon})", f"{done[i]}"),
        ),
        _ends_here(ok, last, ended, seq, "no end before the horizon"),
    ]


def _counted(
    ok: NDArray[np.bool_],
    orders: pl.DataFrame,
    paid: pl.DataFrame,
    seq: NDArray[np.int64],
    n: int,
) -> _Check:
    """`transition`: each step holds one order and one reward per agent."""
    count_bad = np.zeros(len(seq), dtype=bool)
    for counted in (orders, paid):
        at = counted["_row"].to_numpy()
        count_bad |= np.bincount(at[at >= 0], minlength=len(seq)) != n
    return _Check(
        "transition",
        ok & count_bad,
        seq,
        lambda i: (f"{n} orders and {n} rewards, one per agent", "others"),
    )


def _ordered(ok: NDArray[np.bool_], orders: pl.DataFrame) -> _Check:
    """`transition`: each order is its agent's, of the control the step applied for it."""
    o_row = orders["_row"].to_numpy()
    return _Check(
        "transition",
        (o_row >= 0) & _take(ok, o_row, False) & ~orders["fits"].to_numpy(),
        orders["seq"].to_numpy(),
        lambda i: (
            "an order by agent {} of its action's control, as the step applied it".format(
                orders["primitive"][i]
            ),
            "{} ordering action {} as {}".format(
                *orders.select("account", "action", "control").row(i)
            ),
        ),
    )


def _paid(
    ok: NDArray[np.bool_], paid: pl.DataFrame, units: NDArray[np.int64], world: _Control
) -> _Check:
    """`reward-value`: each agent is paid what g gives it for the step (`units`)."""
    p_row, agent = paid["_row"].to_numpy(), paid["agent"].to_numpy()
    mapped = (p_row >= 0) & (agent >= 0)
    owed = np.where(mapped, units[np.maximum(p_row, 0), np.maximum(agent, 0)], 0)
    got = paid["r"].to_numpy()
    return _Check(
        "reward-value",
        (p_row >= 0) & _take(ok, p_row, False) & ((agent < 0) | (got != owed)),
        paid["seq"].to_numpy(),
        lambda i: (
            f"{owed[i]} units ({world.name}'s g for agent {agent[i]})"
            if agent[i] >= 0
            else "a reward to one of the run's agents",
            f"{got[i]} units",
        ),
    )


def _orders(piece: _Kinds, steps: pl.DataFrame, world: _Control) -> pl.DataFrame:
    """Each order with its control step's row (`_row`, -1 for none), and whether it `fits`:
    the agent numbered `primitive` orders its action's control, the one the step applied
    for it."""
    accounts = dict(enumerate(world.accounts))
    controls = dict(enumerate(float(c) for c in world.task.controls))
    orders = piece.of("order")
    at = _rows(orders["tx"].to_numpy(), steps["tx"].to_numpy()).at
    applied = steps["controls"].gather(np.maximum(at, 0))
    prim = _C("primitive")
    fits = (
        (_C("account") == prim.replace_strict(accounts, default=None, return_dtype=pl.String))
        & (
            _C("control")
            == _C("action").replace_strict(controls, default=None, return_dtype=pl.Float64)
        )
        & (_C("control") == _C("applied").list.get(prim, null_on_oob=True))
    ).fill_null(False)
    return orders.with_columns(applied.alias("applied")).with_columns(
        fits.alias("fits"), pl.Series("_row", at)
    )


def _rewards(piece: _Kinds, tx: NDArray[np.int64], world: _Control) -> pl.DataFrame:
    """Each reward with its control step's row (`_row`, -1 for none), signed (`r`), and its
    agent's number (`agent`, -1 for an account that is not one of the run's agents)."""
    numbers = {a: i for i, a in enumerate(world.accounts)}
    src, dst, amount = _C("src"), _C("dst"), _C("amount")
    to = pl.when(src == ENVIRONMENT).then(dst).otherwise(src)
    paid = piece.of("reward")
    return paid.select(
        "seq",
        pl.when(src == ENVIRONMENT).then(amount).otherwise(-amount).fill_null(0).alias("r"),
        to.replace_strict(numbers, default=-1, return_dtype=pl.Int64).alias("agent"),
        pl.Series("_row", _rows(paid["tx"].to_numpy(), tx).at),
    )
