"""The control tasks of the cooperative control market: dynamics, rewards, goals, feasibility."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from agents.fixed_control import PushAndCoast
from market.control_tasks import (
    CONTROL_TASKS,
    ControlTask,
    HangingPendulum,
    Integrator,
    Pendulum,
    Stiction,
    StictionL1,
    make_control_task,
    wrap,
)

Array = NDArray[np.float64]
NAMES = sorted(CONTROL_TASKS)


def _random_batch(task: ControlTask, rng: np.random.Generator, batch: int) -> tuple[Array, Array]:
    """Random states near the task's range and random controls from its control set."""
    x = rng.uniform(-np.pi, np.pi, size=(batch, task.state_dim))
    u = rng.choice(task.controls, size=(batch, task.n_agents))
    return x, u


# --- the interface ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [2, 5])
def test_shapes(name: str, n: int) -> None:
    """reset, f, g, in_goal, controls and targets have the documented shapes and dtypes."""
    task = make_control_task(name, n)
    x = task.reset(np.random.default_rng(0), 7)
    u = np.tile(task.controls[:1], (7, n))
    assert x.shape == (7, task.state_dim) and x.dtype == np.float64
    assert task.f(x, u).shape == (7, task.state_dim)
    assert task.g(x, u).shape == (7, n)
    goal = task.in_goal(x)
    assert goal.shape == (7,) and goal.dtype == np.bool_
    assert task.targets.shape == (n,) and task.n_agents == n
    assert task.controls.ndim == 1 and 0.0 in task.controls
    assert task.horizon > 0 and task.name == name


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_rows(name: str) -> None:
    """A batch of B states gives the same f, g and in_goal as B batches of one row."""
    task = make_control_task(name, 3)
    x, u = _random_batch(task, np.random.default_rng(1), 9)
    rows = range(len(x))
    np.testing.assert_array_equal(
        task.f(x, u), np.concatenate([task.f(x[i : i + 1], u[i : i + 1]) for i in rows])
    )
    np.testing.assert_array_equal(
        task.g(x, u), np.concatenate([task.g(x[i : i + 1], u[i : i + 1]) for i in rows])
    )
    np.testing.assert_array_equal(
        task.in_goal(x), np.concatenate([task.in_goal(x[i : i + 1]) for i in rows])
    )


@pytest.mark.parametrize("name", NAMES)
def test_reward_uses_only_own_control(name: str) -> None:
    """Changing agent j's control leaves every other agent's reward column unchanged."""
    task = make_control_task(name, 4)
    rng = np.random.default_rng(2)
    x, u = _random_batch(task, rng, 16)
    base = task.g(x, u)
    for j in range(task.n_agents):
        other = u.copy()
        other[:, j] = np.where(u[:, j] == 0.0, task.controls[-1], 0.0)
        changed = task.g(x, other)
        keep = [i for i in range(task.n_agents) if i != j]
        np.testing.assert_array_equal(changed[:, keep], base[:, keep])
        assert np.all(changed[:, j] != base[:, j])


@pytest.mark.parametrize("name", NAMES)
def test_reset_is_deterministic_for_a_seed(name: str) -> None:
    """The same seed gives the same initial states; another seed gives others."""
    task = make_control_task(name, 2)
    a = task.reset(np.random.default_rng(5), 8)
    b = task.reset(np.random.default_rng(5), 8)
    c = task.reset(np.random.default_rng(6), 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_make_control_task_unknown_name_names_the_choices() -> None:
    """An unknown task name is a ValueError listing the known ones."""
    with pytest.raises(ValueError, match="pendulum, pendulum-hanging, integrator"):
        make_control_task("cartpole", 2)


@pytest.mark.parametrize("n", [-1, 0, 17])
@pytest.mark.parametrize("name", NAMES)
def test_make_control_task_rejects_agent_counts_outside_1_to_16(name: str, n: int) -> None:
    """Fewer than 1 or more than 16 agents is a ValueError."""
    with pytest.raises(ValueError, match="n_agents"):
        make_control_task(name, n)


@pytest.mark.parametrize("n", [1, 16])
def test_make_control_task_builds_the_named_task(n: int) -> None:
    """make_control_task returns the registered class with n agents, at both ends of 1..16."""
    assert isinstance(make_control_task("pendulum", n), Pendulum)
    assert isinstance(make_control_task("integrator", n), Integrator)
    assert make_control_task("pendulum", n).n_agents == n


def test_controls_and_targets_are_read_only() -> None:
    """The shared control set and the targets cannot be changed in place by a caller."""
    task = Pendulum(2)
    with pytest.raises(ValueError):
        task.controls[0] = 0.0
    with pytest.raises(ValueError):
        task.targets[0] = 0.0


# --- wrapping --------------------------------------------------------------------------------


def test_wrap_maps_into_minus_pi_to_pi() -> None:
    """wrap sends angles into [-pi, pi): pi and -pi to -pi, 3pi/2 to -pi/2, -7 to 2pi - 7."""
    got = wrap(np.array([np.pi, -np.pi, 1.5 * np.pi, 0.3, -7.0]))
    np.testing.assert_allclose(got, [-np.pi, -np.pi, -0.5 * np.pi, 0.3, 2 * np.pi - 7.0])
    wide = wrap(np.linspace(-50.0, 50.0, 10_001))
    assert np.all(wide >= -np.pi) and np.all(wide < np.pi)


def test_wrap_just_below_minus_pi_is_not_plus_pi() -> None:
    """The float just below -pi wraps to -pi, not to pi (np.mod rounds it up to 2 pi)."""
    assert wrap(np.array([np.nextafter(-np.pi, -np.inf)]))[0] == -np.pi


def test_pendulum_step_wraps_theta_across_pi() -> None:
    """A pendulum swinging through hanging-down (theta = pi) comes out near -pi."""
    task = Pendulum(2)
    nxt = task.f(np.array([[np.pi - 0.01, 2.0]]), np.zeros((1, 2)))
    assert -np.pi <= nxt[0, 0] < -np.pi + 0.2


def test_pendulum_reward_wraps_the_angle_error() -> None:
    """The angle error is wrapped: theta = -3.0 is 2 pi - 3.5 from a 0.5 target, not -3.5."""
    task = Pendulum(2)
    reward = task.g(np.array([[-3.0, 0.0]]), np.zeros((1, 2)))
    expected = -((2 * np.pi + np.array([-3.0, -3.0]) - task.targets) ** 2)
    np.testing.assert_allclose(reward[0], expected)


# --- the pendulum ----------------------------------------------------------------------------


def test_pendulum_step_by_hand() -> None:
    """f is the semi-implicit Euler step with g/l = 9.81, b = 0.1, m = l = 1, dt = 0.05."""
    task = Pendulum(2)
    x = np.array([[0.3, -1.2]])
    u = np.array([[1.5, -0.5]])
    omega = -1.2 + 0.05 * (9.81 * np.sin(0.3) - 0.1 * -1.2 + 1.0)
    np.testing.assert_allclose(task.f(x, u), [[0.3 + 0.05 * omega, omega]])


def test_pendulum_reward_by_hand() -> None:
    """g_i = -(theta - theta*_i)^2 - c u_i^2 with targets 0.45, 0.55 and c = 0.01 / u_max^2."""
    task = Pendulum(2)
    u_max = 9.81 * np.sin(0.5) / 1.5
    np.testing.assert_allclose(task.targets, [0.45, 0.55])
    np.testing.assert_allclose(task.u_max, u_max)
    reward = task.g(np.array([[0.6, 3.0]]), np.array([[u_max, -u_max / 2]]))
    np.testing.assert_allclose(reward, [[-(0.15**2) - 0.01, -(0.05**2) - 0.0025]])


@pytest.mark.parametrize("m", [5, 7])
def test_pendulum_controls_span_the_torque_bound(m: int) -> None:
    """The control set is m torques evenly over [-u_max, u_max], 0 included."""
    task = Pendulum(3, n_controls=m)
    np.testing.assert_allclose(task.controls, np.linspace(-task.u_max, task.u_max, m))
    assert task.controls[m // 2] == 0.0


def test_pendulum_rejects_a_control_set_without_zero() -> None:
    """An even number of controls (0 would be missing) is a ValueError."""
    with pytest.raises(ValueError, match="n_controls"):
        Pendulum(2, n_controls=4)


def test_hanging_pendulum_starts_hanging_down() -> None:
    """pendulum-hanging starts hanging down (theta = pi) and at rest, up to noise of 0.05."""
    task = make_control_task("pendulum-hanging", 2)
    x = task.reset(np.random.default_rng(0), 64)
    assert np.all(np.abs(wrap(x[:, 0] - np.pi)) <= 0.05)
    assert np.all(np.abs(x[:, 1]) <= 0.05)
    assert np.ptp(x[:, 0]) > 0.0


def test_pendulum_starts_anywhere_with_the_same_dynamics_and_rewards() -> None:
    """pendulum starts anywhere on the circle (omega within 1), the hanging one's f and g."""
    task, hanging = Pendulum(2), make_control_task("pendulum-hanging", 2)
    x = task.reset(np.random.default_rng(0), 4000)
    assert np.all(np.abs(x[:, 1]) <= 1.0)
    assert (np.abs(x[:, 0]) < 0.5).mean() > 0.1 and (np.abs(x[:, 0]) > 2.6).mean() > 0.1
    u = np.random.default_rng(1).choice(task.controls, size=(4000, 2))
    assert np.array_equal(task.f(x, u), hanging.f(x, u))
    assert np.array_equal(task.g(x, u), hanging.g(x, u))


def test_pendulum_features_are_continuous_across_the_bottom() -> None:
    """The learner reads (cos, sin, omega): the two sides of theta = +-pi read the same."""
    task = Pendulum(2)
    sides = np.array([[np.pi - 1e-9, 0.3], [-np.pi + 1e-9, 0.3]])
    features = task.features(sides)
    assert features.shape == (2, 3)
    assert np.allclose(features[0], features[1]) and np.allclose(features[0], [-1, 0, 0.3])


def test_pendulum_goal_band() -> None:
    """The goal band is |theta - theta*| < 0.1 and |omega| < 0.5 around theta* = 0.5."""
    task = Pendulum(2)
    x = np.array([[0.5, 0.0], [0.59, 0.49], [0.41, -0.49], [0.61, 0.0], [0.5, 0.51], [-0.5, 0.0]])
    x = np.concatenate([x, [[0.5 + 2 * np.pi, 0.0]]])  # an unwrapped angle counts too
    np.testing.assert_array_equal(task.in_goal(x), [True, True, True, False, False, False, True])
    np.testing.assert_allclose(
        task.goal_error(x), [0.0, 0.09, 0.09, 0.11, 0.0, 1.0, 0.0], atol=1e-12
    )


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_pendulum_holding_torque_needs_all_n_agents(n: int) -> None:
    """The static torque at theta* lies between (N-1) u_max and N u_max, half an agent from
    each."""
    task = Pendulum(n)
    hold = 9.81 * np.sin(0.5)
    assert (n - 1) * task.u_max < hold < n * task.u_max
    np.testing.assert_allclose([hold - (n - 1) * task.u_max, n * task.u_max - hold], task.u_max / 2)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_pendulum_at_rest_at_theta_star_rises_with_all_and_falls_with_one_idle(n: int) -> None:
    """At rest at theta*, N agents at full torque push it up; with any one agent idle it falls."""
    task = Pendulum(n)
    push = -task.u_max  # theta* > 0, so the holding torque points back toward upright
    u = np.full((n + 1, n), push)
    u[np.arange(n), np.arange(n)] = 0.0  # row i: agent i idles; the last row: nobody idles
    x = np.tile([task.theta_star, 0.0], (n + 1, 1))
    omega = task.f(x, u)[:, 1]
    assert np.all(omega[:n] > 0.0)  # falls away from upright: the static balance fails
    assert omega[n] < 0.0  # all together beat gravity


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_pendulum_cannot_be_lifted_without_a_swing(n: int) -> None:
    """At rest and horizontal, even N agents at full torque cannot hold it: it must be swung."""
    task = Pendulum(n)
    omega = task.f(np.array([[np.pi / 2, 0.0]]), np.full((1, n), -task.u_max))[0, 1]
    assert omega > 0.0


@pytest.mark.parametrize("n", range(2, 9))
def test_pendulum_goal_band_needs_every_agent_only_up_to_three(n: int) -> None:
    """At theta* = 0.5, N-1 agents lack the static torque for anywhere in the goal band only for
    N <= 3; from N = 4 on they can hold its lower edge."""
    task = Pendulum(n)
    lowest = task.theta_star - task.angle_band
    assert ((n - 1) * task.u_max < 9.81 * np.sin(lowest)) == (n <= 3)


def _bang_bang(task: Pendulum, x: Array, caught: NDArray[np.bool_]) -> Array:
    """One torque for every agent: pump energy at full torque until the swing would reach
    theta*, then coast; once near theta*, hold it with a PD law rounded to the control set."""
    theta, omega = x[:, 0], x[:, 1]
    energy = 0.5 * omega**2 + task.gravity * np.cos(theta)
    pump = np.where(energy < task.gravity * np.cos(task.theta_star), 1.0, 0.0)
    swing = pump * task.u_max * np.where(omega >= 0.0, 1.0, -1.0)
    error = wrap(theta - task.theta_star)
    wanted = (-task.holding_torque - 20.0 * error - 5.0 * omega) / task.n_agents
    nearest = task.controls[np.abs(task.controls[None, :] - wanted[:, None]).argmin(axis=1)]
    return np.where(caught, nearest, swing)


def _swing_up(task: Pendulum, x: Array) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Run the bang-bang controller over the horizon; the first step in the band (-1 never) and
    whether each run is in the band at the end."""
    caught = np.zeros(len(x), dtype=bool)
    first = np.full(len(x), -1)
    for k in range(task.horizon):
        near = np.abs(wrap(x[:, 0] - task.theta_star)) < 0.15
        caught |= near & (np.abs(x[:, 1]) < 1.0)
        u = np.repeat(_bang_bang(task, x, caught)[:, None], task.n_agents, axis=1)
        x = task.f(x, u)
        first = np.where((first < 0) & task.in_goal(x), k + 1, first)
    return first, task.in_goal(x)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_pendulum_n_agents_swing_up_and_hold_within_the_horizon(n: int) -> None:
    """N agents pumping energy bang-bang reach the goal band within 120 of the 200 steps and
    hold it to the end, from every noisy hanging start."""
    task = HangingPendulum(n)
    first, held = _swing_up(task, task.reset(np.random.default_rng(3), 64))
    assert np.all(first > 0) and np.all(first <= 120)
    assert np.all(held)


# --- the integrator --------------------------------------------------------------------------


def test_integrator_step_and_reward_by_hand() -> None:
    """x' = (p + 0.1 v, v + 0.1 sum u); g_i = -(p - p*_i)^2 - 0.01 u_i^2, targets -0.05, 0.05."""
    task = Integrator(2)
    x = np.array([[-0.4, 0.3]])
    u = np.array([[1.0, -0.5]])
    np.testing.assert_allclose(task.f(x, u), [[-0.37, 0.35]])
    np.testing.assert_allclose(task.targets, [-0.05, 0.05])
    np.testing.assert_allclose(task.g(x, u), [[-(0.35**2) - 0.01, -(0.45**2) - 0.0025]])
    np.testing.assert_allclose(task.controls, [-1.0, -0.5, 0.0, 0.5, 1.0])


def test_integrator_starts_at_minus_one_at_rest() -> None:
    """Initial states are p = -1 (+- 0.05), v = 0."""
    x = Integrator(3).reset(np.random.default_rng(0), 64)
    assert np.all(np.abs(x[:, 0] + 1.0) <= 0.05) and np.all(x[:, 1] == 0.0)
    assert np.ptp(x[:, 0]) > 0.0


def test_integrator_goal_band() -> None:
    """The goal band is |p| < 0.05 and |v| < 0.1."""
    task = Integrator(2)
    x = np.array([[0.0, 0.0], [0.049, -0.099], [0.051, 0.0], [0.0, 0.11], [-1.0, 0.0]])
    np.testing.assert_array_equal(task.in_goal(x), [True, True, False, False, False])
    np.testing.assert_allclose(task.goal_error(x), [0.0, 0.049, 0.051, 0.0, 1.0])


def test_stiction_goal_error_is_the_distance_from_the_target() -> None:
    """How far a state ends from the goal: |p - 1|, whatever its velocity, in the band's
    terms (a state inside the position band and at rest is in the goal)."""
    task = Stiction(4)
    x = np.array([[1.0, 0.0], [0.904, 0.0], [1.03, 0.0], [1.2, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(task.goal_error(x), [0.0, 0.096, 0.03, 0.2, 1.0], atol=1e-12)
    np.testing.assert_array_equal(task.in_goal(x), task.goal_error(x) < task.position_band)


def test_integrator_one_agent_alone_reaches_the_goal() -> None:
    """A sanity task: agent 0 alone, a PD law rounded to the control set, ends in the goal band
    while the others stay idle."""
    task = Integrator(4)
    x = task.reset(np.random.default_rng(4), 16)
    for _ in range(task.horizon):
        wanted = -5.0 * x[:, 0] - 5.0 * x[:, 1]
        u = np.zeros((len(x), task.n_agents))
        u[:, 0] = task.controls[np.abs(task.controls[None, :] - wanted[:, None]).argmin(axis=1)]
        x = task.f(x, u)
    assert np.all(task.in_goal(x))


# --- the cart held by static friction -------------------------------------------------------


def test_stiction_step_by_hand() -> None:
    """N = 2, friction 1.5 (static and kinetic), dt = 0.1: at rest a force of 1.5 does not
    move the cart and 2 does (v = 0.1 (2 - 1.5)); moving at 0.3 with no force it slows by
    0.15; at 0.1 friction stops it rather than pushing it back."""
    task = Stiction(2)
    assert task.friction == 1.5
    x = np.array([[0.2, 0.0], [0.2, 0.0], [0.2, 0.0], [0.5, 0.3], [0.5, 0.1], [0.5, -0.3]])
    u = np.array([[1.0, 0.5], [1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    expected = [
        [0.2, 0.0],
        [0.2 + 0.1 * 0.05, 0.05],
        [0.2 - 0.1 * 0.05, -0.05],
        [0.5 + 0.1 * 0.15, 0.15],
        [0.5, 0.0],
        [0.5 - 0.1 * 0.05, -0.05],
    ]
    np.testing.assert_allclose(task.f(x, u), expected)


def test_stiction_reward_and_goal_band_by_hand() -> None:
    """g_i = -(p - p*_i)^2 - 0.01 u_i^2 with targets 1 +- 0.02; the band is |p - 1| < 0.05
    and |v| < 0.05."""
    task = Stiction(2)
    np.testing.assert_allclose(task.targets, [0.98, 1.02])
    x, u = np.array([[0.5, 0.0]]), np.array([[1.0, -0.5]])
    np.testing.assert_allclose(task.g(x, u), [[-(0.48**2) - 0.01, -(0.52**2) - 0.0025]])
    x = np.array([[1.0, 0.0], [1.049, -0.049], [1.051, 0.0], [1.0, 0.06], [0.0, 0.0]])
    np.testing.assert_array_equal(task.in_goal(x), [True, True, False, False, False])


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_stiction_cannot_be_moved_by_n_minus_one_agents(n: int) -> None:
    """From rest, N - 1 agents at full force in either direction never move the cart."""
    task = Stiction(n)
    x = task.reset(np.random.default_rng(0), 8)
    for sign in (1.0, -1.0):
        u = np.full((8, n), sign)
        u[:, 0] = 0.0
        y = x
        for _ in range(task.horizon):
            y = task.f(y, u)
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_stiction_all_n_agents_reach_and_hold_the_goal(n: int) -> None:
    """All N agents pushing at full force until the cart would coast to a stop at p*, then
    idle (`PushAndCoast`), reach the goal band within 30 steps and hold it to the end, from
    every start."""
    task = Stiction(n)
    central = PushAndCoast(task)
    x = task.reset(np.random.default_rng(5), 32)
    first = np.full(len(x), -1)
    for k in range(task.horizon):
        x = task.f(x, task.controls[central.act(x, np.zeros((len(x), n)))])
        first = np.where((first < 0) & task.in_goal(x), k + 1, first)
    assert np.all((first > 0) & (first <= 30)) and np.all(task.in_goal(x))


# --- the cart whose agents pay their distance -------------------------------------------------


def test_stiction_l1_reward_by_hand_and_the_same_cart() -> None:
    """g_i = -|p - p*_i| - 0.01 u_i^2 with targets 1 +- 0.02; the dynamics, the band and the
    start are the stiction cart's."""
    task, cart = StictionL1(2), Stiction(2)
    x, u = np.array([[0.5, 0.0], [1.1, 0.0]]), np.array([[1.0, -0.5], [0.0, 0.0]])
    np.testing.assert_allclose(task.g(x, u), [[-0.48 - 0.01, -0.52 - 0.0025], [-0.12, -0.08]])
    x, u = _random_batch(task, np.random.default_rng(1), 64)
    np.testing.assert_array_equal(task.f(x, u), cart.f(x, u))
    np.testing.assert_array_equal(task.in_goal(x), cart.in_goal(x))
    ours, its = (t.reset(np.random.default_rng(2), 8) for t in (task, cart))
    np.testing.assert_array_equal(ours, its)


def _central_return(task: Stiction, margin: float) -> float:
    """Mean return per agent of `PushAndCoast(task, margin)` over 32 seeded starts."""
    policy = PushAndCoast(task, margin)
    x, total = task.reset(np.random.default_rng(5), 32), 0.0
    for _ in range(task.horizon):
        u = task.controls[policy.act(x, np.zeros((len(x), task.n_agents)))]
        total, x = total + float(task.g(x, u).mean()), task.f(x, u)
    return total


@pytest.mark.parametrize("n", [2, 4, 8])
def test_stiction_l1_ranks_stopping_short_of_the_goal(n: int) -> None:
    """The central controller that stops 0.1 short of p* (outside the band) loses less than one
    credit per agent to the one that stops in the band under the squared distance, and
    several credits under the distance itself: the reason the task exists."""
    gaps = [
        _central_return(task, 0.02) - _central_return(task, -0.1)
        for task in (Stiction(n), StictionL1(n))
    ]
    assert 0 < gaps[0] < 1 and gaps[1] > 5
