"""Two Rooms: the MiniGrid layout, state ids, starts, options as semi-MDP steps, training."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from minigrid.core.world_object import Door, Goal
from minigrid.wrappers import FullyObsWrapper
from numpy.typing import NDArray

from agents.option_ppo import OptionPPOSettings, ensure_options, train_option
from market.tasks import make_task
from market.two_rooms import (
    ACTIONS,
    DOOR,
    GOALS,
    HEIGHT,
    MAX_STEPS,
    N_STATES,
    OPTION_NAMES,
    OPTION_STEPS,
    WALL_X,
    WIDTH,
    TwoRooms,
    TwoRoomsEnv,
    decode,
    encode,
    episode_over,
    load_checkpoint,
    option_ends,
    option_starts,
    options_path,
    room1_states,
    state_ids,
)

GAMMA = 0.9
DOOR_OPT, GREEN, BLUE = range(3)


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test reads and writes options in its own cache, never ~/.cache."""
    monkeypatch.setenv("MARKET_CACHE", str(tmp_path / "cache"))


# --- scripted options: shortest paths by dynamic programming over the real env -----------------


def _walkable() -> list[tuple[int, int]]:
    """Every cell the agent can stand on: both rooms and the doorway."""
    rooms = [(x, y) for x in range(1, WIDTH - 1) for y in range(1, HEIGHT - 1) if x != WALL_X]
    return [*rooms, DOOR]


@cache
def _successors() -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every (cell, direction, door) state at step 0, and its successor under each action."""
    cells = _walkable()
    states = np.sort(
        np.concatenate([state_ids(x, y, np.arange(8) // 2, np.arange(8) % 2, 0) for x, y in cells])
    )
    env, nxt = TwoRoomsEnv(), np.zeros((len(states), len(ACTIONS)), dtype=np.int64)
    for i, s in enumerate(states.tolist()):
        for a, action in enumerate(ACTIONS):
            env.restore(s)
            env.step(action)
            c = decode(np.array([env.state_id()]))
            nxt[i, a] = state_ids(c.x, c.y, c.direction, c.door, 0)[0]
    return states, nxt


@cache
def _distances(option: int) -> NDArray[np.float64]:
    """Env steps from each state to option `option`'s end (inf if it cannot get there)."""
    states, nxt = _successors()
    col = np.searchsorted(states, nxt)
    target, dead = option_ends(option, states), episode_over(states) & ~option_ends(option, states)
    dist = np.where(target, 0.0, np.inf)
    for _ in range(100):
        new = np.where(target, 0.0, np.where(dead, np.inf, 1 + dist[col].min(axis=1)))
        if np.array_equal(new, dist):
            break
        dist = new
    return dist


def shortest(option: int, state: int) -> int:
    """The fewest env steps option `option` needs from `state` (step count ignored)."""
    states, _ = _successors()
    c = decode(np.array([state]))
    key = state_ids(c.x, c.y, c.direction, c.door, 0)[0]
    return int(_distances(option)[np.searchsorted(states, key)])


class ScriptedOptions:
    """Shortest-path controllers reading the same full-grid encodings as the trained ones."""

    def act(self, option: int, images: NDArray[np.uint8]) -> NDArray[np.int64]:
        states, nxt = _successors()
        col = np.searchsorted(states, nxt)
        _, y, x = np.nonzero(images[:, 0] == 10)  # the agent's cell, one per image
        direction = images[np.arange(len(images)), 2, y, x]
        door_open = (images[:, 2, DOOR[1], DOOR[0]] == 0) | (images[:, 0, DOOR[1], DOOR[0]] == 10)
        keys = state_ids(x, y, direction, door_open.astype(np.int64), 0)
        rows = np.searchsorted(states, keys)
        return np.asarray(_distances(option)[col[rows]].argmin(axis=1), dtype=np.int64)

    def ends(self, option: int, states: NDArray[np.int64]) -> NDArray[np.bool_]:
        return option_ends(option, states)


class Spinner(ScriptedOptions):
    """Options that only ever turn left: they never end by themselves."""

    def act(self, option: int, images: NDArray[np.uint8]) -> NDArray[np.int64]:
        return np.zeros(len(images), dtype=np.int64)


def scripted(goal: str = "green", seed: int = 0) -> TwoRooms:
    """The task with the shortest-path options injected (and gamma = 0.9, to see it)."""
    return TwoRooms(goal, seed=seed, gamma=GAMMA, options=ScriptedOptions())


# --- the environment ---------------------------------------------------------------------------


def test_layout_two_rooms_red_door_goals_in_room_two() -> None:
    """Two 5x5 rooms, a wall at x = 6 with a closed, unlocked red door; both goals in room 2."""
    env = TwoRoomsEnv()
    for x in range(WIDTH):
        for y in range(HEIGHT):
            cell = env.grid.get(x, y)
            border = x in (0, WIDTH - 1) or y in (0, HEIGHT - 1)
            if (x, y) == DOOR:
                assert isinstance(cell, Door) and cell.color == "red"
                assert not cell.is_open and not cell.is_locked
            elif border or x == WALL_X:
                assert cell is not None and cell.type == "wall"
            elif (x, y) in GOALS.values():
                assert isinstance(cell, Goal) and x > WALL_X
            else:
                assert cell is None
    assert [getattr(env.grid.get(*GOALS[c]), "color", None) for c in GOALS] == list(GOALS)
    assert sum(1 for x in range(1, WALL_X) for y in range(1, HEIGHT - 1)) == 25
    assert env.max_steps == MAX_STEPS


def test_reaching_the_goal_pays_the_time_decayed_reward() -> None:
    """Stepping onto the task's goal at step t pays 1 - 0.9 t / max_steps and ends the episode."""
    gx, gy = GOALS["green"]
    env = TwoRoomsEnv("green")
    env.restore(int(state_ids(gx - 1, gy, 0, 1, 40)))
    _, reward, terminated, truncated, _ = env.step(ACTIONS[2])
    assert terminated and not truncated
    assert reward == pytest.approx(1 - 0.9 * 41 / MAX_STEPS)


def test_the_other_goal_ends_the_episode_with_nothing() -> None:
    """Stepping onto the goal of the other colour ends the episode and pays 0."""
    bx, by = GOALS["blue"]
    env = TwoRoomsEnv("green")
    env.restore(int(state_ids(bx - 1, by, 0, 1, 3)))
    _, reward, terminated, _, _ = env.step(ACTIONS[2])
    assert terminated and reward == 0.0


def test_the_door_opens_by_toggling_and_then_lets_the_agent_through() -> None:
    """Facing the closed door, forward does nothing; toggle opens it; forward then enters it."""
    env = TwoRoomsEnv()
    env.restore(int(state_ids(DOOR[0] - 1, DOOR[1], 0, 0, 0)))
    env.step(ACTIONS[2])
    assert tuple(env.agent_pos) == (DOOR[0] - 1, DOOR[1])
    env.step(ACTIONS[3])
    env.step(ACTIONS[2])
    assert tuple(env.agent_pos) == DOOR and env.door.is_open


# --- state ids and observations ----------------------------------------------------------------


def test_state_ids_round_trip() -> None:
    """(x, y, direction, door, step) -> id -> parts is the identity, and so is env restore."""
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, n, 500) for n in (WIDTH, HEIGHT, 4, 2, MAX_STEPS + 1)]
    ids = state_ids(*parts)
    assert ids.min() >= 0 and ids.max() < N_STATES == WIDTH * HEIGHT * 4 * 2 * (MAX_STEPS + 1)
    for got, want in zip(decode(ids), parts, strict=True):
        np.testing.assert_array_equal(got, want)
    env = TwoRoomsEnv()
    for s in option_starts(GREEN)[::7].tolist():
        env.restore(s)
        assert env.state_id() == s


def test_encoding_is_minigrids_full_grid() -> None:
    """`encode` equals FullyObsWrapper's observation of the restored env (channels first)."""
    env = TwoRoomsEnv()
    wrapped = FullyObsWrapper(env)  # type: ignore[no-untyped-call]
    states = np.concatenate([option_starts(DOOR_OPT)[::9], option_starts(GREEN)[::9]])
    for s, image in zip(states.tolist(), encode(states), strict=True):
        env.restore(s)
        full = wrapped.observation(env.gen_obs())["image"]  # type: ignore[no-untyped-call]
        np.testing.assert_array_equal(image, full.transpose(2, 1, 0))


def test_observe_shows_grid_door_agent_and_time_in_unit_range() -> None:
    """`observe` is float32 of `observation_shape` in [0, 1]; the door and the time show in it."""
    task = scripted()
    closed, opened = state_ids(1, 1, 0, 0, 50), state_ids(1, 1, 0, 1, 50)
    obs = task.observe(np.array([closed, opened], dtype=np.int64))
    assert obs.shape == (2, *task.observation_shape) and obs.dtype == np.float32
    assert obs.min() >= 0 and obs.max() <= 1
    assert not np.array_equal(obs[0], obs[1])
    np.testing.assert_allclose(obs[:, 3], 0.5)


# --- starts --------------------------------------------------------------------------------------


def test_starts_deterministic_uniform_in_room_one_and_batch_independent() -> None:
    """Episode e's start depends only on (seed, e): room 1, step 0, door closed, any direction."""
    a, b, c = scripted(seed=3), scripted(seed=3), scripted(seed=3)
    whole = a.starts(np.arange(10_000))
    pieces = [b.starts(np.arange(lo, lo + 8)) for lo in range(0, 10_000, 8)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    np.testing.assert_array_equal(c.starts(np.array([9_999, 5, 5])), whole[[9_999, 5, 5]])
    assert np.isin(whole, room1_states()).all() and len(np.unique(whole)) == 100
    cells = decode(whole)
    assert (cells.t == 0).all() and (cells.door == 0).all() and (cells.x < WALL_X).all()
    assert not np.array_equal(scripted(seed=4).starts(np.arange(100)), whole[:100])


# --- options in the semi-MDP ---------------------------------------------------------------------


def test_goal_option_duration_and_discounted_reward() -> None:
    """A goal option takes Delta env steps, pays gamma^(Delta-1) r at the goal and ends it."""
    task = scripted("green")
    for c in map(decode, option_starts(GREEN)[::11, None]):
        s = int(state_ids(c.x, c.y, c.direction, c.door, 20)[0])
        out = task.step(s, GREEN)
        delta = shortest(GREEN, s)
        assert out.duration == delta and out.done
        assert option_ends(GREEN, np.array([out.next_state]))[0]
        r = 1 - 0.9 * (20 + delta) / MAX_STEPS
        assert out.reward == pytest.approx(GAMMA ** (delta - 1) * r)
        assert decode(np.array([out.next_state])).t[0] == 20 + delta


def test_door_option_enters_room_two_without_reward() -> None:
    """The door option runs until the agent stands in room 2: Delta steps, no reward, not done."""
    task = scripted()
    for s in room1_states()[::9].tolist():
        out = task.step(s, DOOR_OPT)
        c = decode(np.array([out.next_state]))
        assert c.x[0] > WALL_X and c.door[0] == 1 and c.t[0] == out.duration
        assert out.duration == shortest(DOOR_OPT, s)
        assert (out.reward, out.done) == (0.0, False)


def test_door_then_goal_solves_an_episode() -> None:
    """Door then green from a start ends the episode, paying the goal's reward discounted."""
    task = scripted("green")
    first = task.step(int(task.starts(np.array([0]))[0]), DOOR_OPT)
    second = task.step(first.next_state, GREEN)
    steps = first.duration + second.duration
    assert second.done and second.reward == pytest.approx(
        GAMMA ** (second.duration - 1) * (1 - 0.9 * steps / MAX_STEPS)
    )


def test_reaching_the_other_goal_ends_with_nothing() -> None:
    """In the blue task, the green option reaches green: the episode ends, paying 0."""
    out = scripted("blue").step(int(option_starts(GREEN)[0]), GREEN)
    assert out.done and out.reward == 0.0


def test_an_option_takes_at_least_one_step() -> None:
    """The door option called in room 2 (its end already holds) takes exactly one env step."""
    task, room2 = scripted(), option_starts(GREEN)
    for s in room2[decode(room2).x > WALL_X][::13].tolist():
        out = task.step(s, DOOR_OPT)
        assert out.duration == 1 and option_ends(DOOR_OPT, np.array([out.next_state]))[0]


def test_option_runs_at_most_its_cap() -> None:
    """An option that never ends by itself stops after OPTION_STEPS env steps."""
    task = TwoRooms("green", gamma=GAMMA, options=Spinner())
    out = task.step(int(room1_states()[0]), DOOR_OPT)
    assert (out.duration, out.done, out.reward) == (OPTION_STEPS, False, 0.0)


def test_episode_times_out_inside_an_option() -> None:
    """At step max_steps - 1, one env step ends the episode (time-out) and the option with it."""
    s = int(state_ids(1, 1, 0, 0, MAX_STEPS - 1))
    out = scripted().step(s, DOOR_OPT)
    assert (out.duration, out.done, out.reward) == (1, True, 0.0)


def test_an_ended_episode_stays_put() -> None:
    """From a state where the episode is over nothing runs: same state, 0, done, Delta 0."""
    gx, gy = GOALS["green"]
    s = int(state_ids(gx, gy, 0, 1, 12))
    assert tuple(scripted().step(s, BLUE)) == (s, 0.0, True, 0.0)


def test_transition_equals_step_elementwise() -> None:
    """`transition` over a batch (with repeats) is `step` of each pair, run separately."""
    rng = np.random.default_rng(1)
    pool = np.concatenate([room1_states(), option_starts(GREEN)])
    states = rng.choice(pool, 60)
    states = np.concatenate([states, states[:10]])
    prims = rng.integers(0, len(OPTION_NAMES), len(states))
    batch = scripted().transition(states, prims)
    single = scripted()
    for i, (s, p) in enumerate(zip(states.tolist(), prims.tolist(), strict=True)):
        out = single.step(s, p)
        assert (batch.next_state[i], batch.done[i], batch.duration[i]) == (
            out.next_state,
            out.done,
            out.duration,
        )
        assert batch.reward[i] == out.reward


def test_tables_refuse() -> None:
    """Two Rooms has no table of every state: `tables` raises a ValueError."""
    with pytest.raises(ValueError, match="no transition table"):
        scripted().tables()


# --- the trained options -------------------------------------------------------------------------


def test_missing_options_name_how_to_train_them() -> None:
    """Without trained options in the cache, making the task says how to train them."""
    with pytest.raises(ValueError, match=r"agents\.option_ppo"):
        make_task("tworooms")


def test_option_training_is_deterministic() -> None:
    """The same settings and seed train the same weights."""
    cfg = OptionPPOSettings(door_steps=64, goal_steps=64, envs=4, rollout=16, minibatch=32)
    a = train_option(DOOR_OPT, cfg).net
    b = train_option(DOOR_OPT, cfg).net
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_option_ppo_smoke_writes_loadable_options() -> None:
    """A tiny training budget writes a checkpoint that the task loads and runs greedily."""
    cfg = OptionPPOSettings(door_steps=256, goal_steps=256, envs=4, rollout=32, minibatch=64)
    seen: list[tuple[str, int, int]] = []
    path = ensure_options(seed=0, progress=lambda *a: seen.append(a), settings=cfg)
    assert path == options_path(0) and path.exists()
    assert {name for name, _, _ in seen} == set(OPTION_NAMES)
    figures = load_checkpoint(0)["figures"]
    assert all(0 <= figures[n]["success"] <= 1 and figures[n]["seconds"] > 0 for n in OPTION_NAMES)
    task = make_task("tworooms-blue", seed=0, gamma=0.99)
    starts = task.starts(np.arange(4))
    moved = task.transition(starts, np.array([0, 1, 2, 0]))
    assert ((moved.duration >= 1) & (moved.duration <= OPTION_STEPS)).all()
    assert ensure_options(seed=0) == path  # present: not trained again
