"""The tabular tasks of methods.md: transitions, rewards, horizons and Q*."""

from __future__ import annotations

import numpy as np
import pytest

from agents.fixed import truthful_values
from market.tasks import Bandit, Chain, Duality, Task, make_task

GAMMA = 0.99


# --- Bandit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arm", "payout"), [(0, 0.2), (1, 0.4), (2, 0.6), (3, 0.8)])
def test_bandit_arm_pays_and_ends(arm: int, payout: float) -> None:
    """Bandit: one state, four arms paying 0.2, 0.4, 0.6, 0.8; every pull ends the episode."""
    task = Bandit()
    out = task.step(0, arm)
    assert (out.next_state, out.done) == (0, True)
    assert out.reward == pytest.approx(payout)
    assert (task.n_states, task.n_primitives, task.horizon, task.start) == (1, 4, 1, 0)


def test_bandit_q_star_is_the_payouts() -> None:
    """Bandit: Q*(0, arm) is the arm's payout, so arm 3 is optimal."""
    q = Bandit().q_star(GAMMA)
    np.testing.assert_allclose(q, [[0.2, 0.4, 0.6, 0.8]])
    assert int(q[0].argmax()) == 3


# --- Chain -----------------------------------------------------------------------------------


def test_chain_shape() -> None:
    """Chain: states 0..5 from 0, primitives L and R, horizon 20."""
    task = Chain()
    assert (task.n_states, task.primitive_names, task.horizon, task.start) == (
        6,
        ("L", "R"),
        20,
        0,
    )


@pytest.mark.parametrize("state", range(4))
def test_chain_r_moves_right_without_reward(state: int) -> None:
    """Chain: R moves one state right, paying 0 before the goal."""
    out = Chain().step(state, Chain.primitive_names.index("R"))
    assert (out.next_state, out.reward, out.done) == (state + 1, 0.0, False)


def test_chain_reaching_the_goal_pays_and_ends() -> None:
    """Chain: R from 4 reaches the goal 5, pays 0.8 and ends the episode."""
    out = Chain().step(4, Chain.primitive_names.index("R"))
    assert (out.next_state, out.done) == (5, True)
    assert out.reward == pytest.approx(0.8)


@pytest.mark.parametrize(("state", "after"), [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)])
def test_chain_l_moves_left_and_stays_at_zero(state: int, after: int) -> None:
    """Chain: L moves one state left, except at 0 where it stays; it never pays."""
    out = Chain().step(state, Chain.primitive_names.index("L"))
    assert (out.next_state, out.reward, out.done) == (after, 0.0, False)


def test_chain_q_star_of_r() -> None:
    """Chain: Q*(s, R) = 0.8 * 0.99^(4 - s) for s = 0..4, and R is optimal everywhere."""
    q = Chain().q_star(GAMMA)
    r, left = Chain.primitive_names.index("R"), Chain.primitive_names.index("L")
    for s in range(5):
        assert q[s, r] == pytest.approx(0.8 * GAMMA ** (4 - s), rel=1e-12)
        assert q[s, r] > q[s, left]


def test_chain_q_star_of_l() -> None:
    """Chain: Q*(s, L) = 0.99 * V*(max(s - 1, 0)), the discounted value of the state it reaches."""
    q = Chain().q_star(GAMMA)
    v = [0.8 * GAMMA ** (4 - s) for s in range(5)]
    for s in range(5):
        assert q[s, Chain.primitive_names.index("L")] == pytest.approx(GAMMA * v[max(s - 1, 0)])


# --- Duality ---------------------------------------------------------------------------------

DUALITY_TABLE = [
    ((0, "a0"), (2, 0.0)),
    ((0, "a1"), (1, 0.5)),
    ((1, "a0"), (0, 0.5)),
    ((1, "a1"), (1, 0.3)),
    ((2, "a0"), (2, -1.0)),
    ((2, "a1"), (2, -1.0)),
]


@pytest.mark.parametrize(("key", "result"), DUALITY_TABLE)
def test_duality_transitions(key: tuple[int, str], result: tuple[int, float]) -> None:
    """Duality: the transition and reward of each (state, primitive), never ending early."""
    state, name = key
    out = Duality().step(state, Duality.primitive_names.index(name))
    assert (out.next_state, out.done) == (result[0], False)
    assert out.reward == pytest.approx(result[1])


def test_duality_shape() -> None:
    """Duality: states 0, 1 and the absorbing 2, primitives a0 and a1, 10 steps from state 0."""
    task = Duality()
    assert (task.n_states, task.primitive_names, task.horizon, task.start) == (
        3,
        ("a0", "a1"),
        10,
        0,
    )


def test_duality_q_star_alternates() -> None:
    """Duality: Q* prefers a1 in state 0 and a0 in state 1 (the optimal alternation)."""
    q = Duality().q_star(GAMMA)
    a0, a1 = Duality.primitive_names.index("a0"), Duality.primitive_names.index("a1")
    assert q[0, a1] > q[0, a0]
    assert q[1, a0] > q[1, a1]


def test_duality_absorbing_state_is_worth_minus_one_forever() -> None:
    """Duality: Q*(2, .) = -1 / (1 - gamma), the value of paying -1 at every step."""
    q = Duality().q_star(GAMMA)
    np.testing.assert_allclose(q[2], -1.0 / (1.0 - GAMMA), rtol=1e-9)


def test_duality_greedy_q_star_returns_five() -> None:
    """Duality: acting greedily on Q* for the 10-step horizon alternates a1, a0 and returns 5.0."""
    task = Duality()
    q = task.q_star(GAMMA)
    state, total, actions = task.start, 0.0, []
    for _ in range(task.horizon):
        a = int(q[state].argmax())
        out = task.step(state, a)
        actions.append(task.primitive_names[a])
        state, total = out.next_state, total + out.reward
    assert actions == ["a1", "a0"] * 5
    assert total == pytest.approx(5.0)


# --- truthful valuations and the task registry -----------------------------------------------


def test_truthful_values_scale_duality_into_the_bid_range() -> None:
    """truthful_values divides Duality's Q* by max |Q*| and bids 0 for negative valuations."""
    q = Duality().q_star(GAMMA)
    values = truthful_values(Duality(), GAMMA)
    assert np.abs(q).max() > 1.0
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    np.testing.assert_allclose(values, np.clip(q / np.abs(q).max(), 0.0, None))
    assert (values[q < 0] == 0.0).all()
    for s in (0, 1):  # the ranking, hence the allocation, is unchanged where Q* > 0
        assert int(values[s].argmax()) == int(q[s].argmax())


@pytest.mark.parametrize("task", [Bandit(), Chain()], ids=["bandit", "chain"])
def test_truthful_values_are_q_star_where_it_fits(task: Task) -> None:
    """Where every |Q*| <= 1 (Bandit, Chain) truthful_values is Q* itself, unscaled."""
    np.testing.assert_array_equal(truthful_values(task, GAMMA), task.q_star(GAMMA))


@pytest.mark.parametrize("name", ["bandit", "chain", "duality"])
def test_make_task_by_name(name: str) -> None:
    """make_task builds the task registered under its name."""
    assert make_task(name).name == name


def test_unknown_task_names_the_choices() -> None:
    """An unknown task name raises ValueError listing every known task."""
    with pytest.raises(ValueError, match="threerooms") as info:
        make_task("threerooms")
    for name in ("bandit", "chain", "duality", "mental-rotation", "tworooms"):
        assert name in str(info.value)


def test_chain_with_useless_primitives_keeps_r_as_the_only_way_to_the_goal() -> None:
    """With 12 primitives, Chain adds stay/reset/back moves that never move towards the goal,
    so Q* still picks R everywhere and every useless primitive is worth less than R."""
    task = make_task("chain", primitives=12)
    assert isinstance(task, Chain)
    assert task.primitive_names[:5] == ("L", "R", "stay0", "reset0", "back0")
    assert task.n_primitives == 12
    for s in range(task.goal):
        for p in range(2, 12):
            assert task.step(s, p).next_state <= s and task.step(s, p).reward == 0.0
    assert task.step(3, 3).next_state == 0  # reset0
    assert task.step(3, 2).next_state == 3  # stay0
    q = task.q_star(0.99)
    assert (q[: task.goal].argmax(axis=1) == 1).all()
    assert (q[: task.goal, 2:] < q[: task.goal, 1:2]).all()
    assert np.allclose(q[:, :2], make_task("chain").q_star(0.99))  # L and R are unchanged


def test_primitives_is_for_chain_only_and_needs_l_and_r() -> None:
    """--primitives on another task, or fewer than 2, is a ValueError naming the rule."""
    with pytest.raises(ValueError, match="has its own"):
        make_task("duality", primitives=4)
    with pytest.raises(ValueError, match=">= 2"):
        make_task("chain", primitives=1)
