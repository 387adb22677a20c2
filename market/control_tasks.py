"""Control tasks for the cooperative control market (methods.md Part 2): N agents, one system.

Köpf et al. (2019) drive one nonlinear system x_{k+1} = f(x_k, u_{1,k}, ..., u_{N,k}) with N
agents, each choosing a scalar control from one shared discrete set U and earning its own
reward g_i(x_k, u_k). The paper's own task could not be read, so the tasks here are our
choice (methods.md, "[ours]"). Everything is batched: a state batch is (B, state_dim), a
control batch (B, N); all arithmetic is float64 NumPy with no loop over the batch.

`Pendulum` ("pendulum"): a damped pendulum, theta the angle from upright wrapped to
[-pi, pi), starting anywhere (theta uniform on the circle, omega uniform in [-1, 1]): exploring
starts, so that learners meet the top before they can swing up to it; half the episodes
start in the lower half and must swing. `HangingPendulum` ("pendulum-hanging") starts every
episode hanging down (theta = pi, omega = 0, +- 0.05 uniform noise on each): the swing-up
every time, what the experiments evaluate greedy policies on. A learner's network reads
(cos theta, sin theta, omega), which has no jump at the bottom.
Semi-implicit Euler, dt = 0.05:
omega' = omega + dt (g/l sin theta - b omega + sum_i u_i / (m l^2)),
theta' = wrap(theta + dt omega'), with m = l = 1, g = 9.81, b = 0.1. Agent i wants the
pendulum at its own target theta*_i, spread evenly over theta* +- 0.05 with theta* = 0.5 rad
(a keyword), and pays for its own torque: g_i = -wrap(theta - theta*_i)^2 - c u_i^2 with
c = 0.01 / u_max^2, so full torque costs 0.01 a step whatever N is. Holding the pendulum at
rest at theta* takes the static torque T* = m g l sin theta* (4.70; pointing back toward
upright, i.e. sum_i u_i = -T* for theta* > 0). Each agent's torque is bounded by

    u_max = T* / (N - 1/2),

so N agents at full torque give T* + u_max/2 and N - 1 give T* - u_max/2: the pendulum can be
held at theta* only if every agent pushes, and no agent can do it alone. Since N u_max is below
m g l (the torque that holds it horizontal), it cannot be lifted straight up: it has to be
swung. The controls are linspace(-u_max, u_max, M), M = 5 (or 7). The goal band is
|wrap(theta - theta*)| < 0.1 and |omega| < 0.5; an episode lasts 200 steps (10 s). All N
agents pumping energy bang-bang reach the band in about 50 steps (at most about 105 from the
noisy starts) and can hold it to the end; with b = 0.05 that controller sometimes misses.

Limits of this choice. "Every agent is needed" holds exactly at theta*, not across the band:
N - 1 agents at full torque balance the pendulum at arcsin((N-1) u_max / m g l), which lies
inside the goal band from N = 4 on (0.42 rad at N = 4, 0.46 at N = 8). The targets above
arcsin(N u_max / m g l) cannot be held at all from N = 7 on (0.537 rad at N = 8). A larger
theta* widens both margins but removes the swing: theta* = 1.2 keeps N - 1 agents out of the
band up to N = 11, but then up to 7 agents can lift the pendulum straight up. No theta* keeps
both for every N up to 16 with a 0.1 band.

`Stiction` ("stiction"): a cart (p, v), mass 1, dt = 0.1, held by friction F = N - 1/2, both
static and kinetic, with controls linspace(-1, 1, 5) per agent and the force their sum. At
rest it stays unless |sum_i u_i| > F: all N agents pushing at full force break it loose,
N - 1 never do. Moving, v' = v + dt (sum_i u_i - F sgn v), and where friction would reverse
it, it stops (v' = 0). p' = p + dt v'. It starts at rest at p = 0 (+- 0.02 uniform noise);
targets spread over p* = 1 +- 0.02; g_i = -(p - p*_i)^2 - 0.01 u_i^2; goal band
|p - 1| < 0.05 and |v| < 0.05 (at rest, friction holds it); horizon 100. Doing nothing earns
-100 per agent; all N pushing until the cart would coast to rest at p*, then idling, earns
about -11 (agents/fixed_control.py, `PushAndCoast`). Coordination is needed: an agent that
pushes alone pays for it and gains nothing.

`StictionL1` ("stiction-l1"): the same cart, each agent paying its distance from its target
rather than its square: g_i = -|p - p*_i| - 0.01 u_i^2. The squared distance ranks the goal
only weakly near it: resting 0.1 short of p* costs 0.01 a step, as much as one agent's full
push, so policies that stop short of the band, or keep one agent pushing against friction,
earn nearly the central controller's return (docs/control.md). Here resting 0.1 short costs
0.1 a step, ten full pushes. Doing nothing still earns -100 per agent.

`Integrator` ("integrator"): a sanity task, the linear double integrator (p, v) with
x' = (p + dt v, v + dt sum_i u_i), dt = 0.1, controls linspace(-1, 1, 5), starting at
p = -1 (+- noise), v = 0; targets spread over 0 +- 0.05; g_i = -(p - p*_i)^2 - 0.01 u_i^2;
goal band |p| < 0.05 and |v| < 0.1; horizon 100.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from market.tasks import gym_id

Array = NDArray[np.float64]

MIN_AGENTS = 1
MAX_AGENTS = 16


def wrap(angle: Array) -> Array:
    """Angles wrapped to [-pi, pi) (pi itself maps to -pi)."""
    out = np.mod(angle + np.pi, 2.0 * np.pi) - np.pi
    # np.mod can round a tiny negative up to 2 pi, which would give +pi: fold it back.
    return np.where(out >= np.pi, out - 2.0 * np.pi, out)


def _frozen(values: Array) -> Array:
    """A read-only float64 copy (controls and targets are shared by every caller)."""
    out = np.array(values, dtype=np.float64)
    out.setflags(write=False)
    return out


def _spread(center: float, half_width: float, n: int) -> Array:
    """n targets evenly over center +- half_width."""
    return np.linspace(center - half_width, center + half_width, n)


class ControlTask:
    """A deterministic system driven by the sum of N agents' scalar controls; each agent's
    reward uses only the state and its own control."""

    name: str = ""
    state_dim: int = 0
    horizon: int = 1

    def __init__(self, n_agents: int = 2) -> None:
        if not MIN_AGENTS <= n_agents <= MAX_AGENTS:
            raise ValueError(
                f"n_agents must be between {MIN_AGENTS} and {MAX_AGENTS}; got {n_agents}"
            )
        self.n_agents = n_agents
        self.controls: Array = _frozen(np.zeros(1))
        self._targets: Array = _frozen(np.zeros(n_agents))

    @property
    def targets(self) -> Array:
        """Each agent's own target, shape (N,)."""
        return self._targets

    def reset(self, rng: np.random.Generator, batch: int) -> Array:
        """`batch` initial states, shape (batch, state_dim)."""
        raise NotImplementedError

    def f(self, x: Array, u: Array) -> Array:
        """The next states for states x (B, state_dim) under controls u (B, N)."""
        raise NotImplementedError

    def g(self, x: Array, u: Array) -> Array:
        """Every agent's reward for controls u (B, N) in states x (B, state_dim): (B, N)."""
        raise NotImplementedError

    def in_goal(self, x: Array) -> NDArray[np.bool_]:
        """Whether each state of x (B, state_dim) is in the goal band: (B,)."""
        raise NotImplementedError

    def goal_error(self, x: Array) -> Array:
        """How far each state of x (B, state_dim) is from the goal in the band's first
        measure (the angle off theta*, the position off p*): (B,); NaN without a band."""
        return np.full(len(x), np.nan)

    def features(self, x: Array) -> Array:
        """What a learner's network reads of states x (B, state_dim): the states themselves
        unless a task says otherwise."""
        return x


class Pendulum(ControlTask):
    """A damped pendulum that N agents must swing up and hold at theta* = 0.5 rad off upright;
    each agent's torque bound u_max = m g l sin(theta*) / (N - 1/2) makes every agent needed."""

    name = "pendulum"
    state_dim = 2
    horizon = 200
    dt = 0.05
    gravity = 9.81
    mass = 1.0
    length = 1.0
    damping = 0.1
    target_spread = 0.05
    angle_band = 0.1
    omega_band = 0.5
    effort_cost = 0.01  # the cost of full torque per step; c = effort_cost / u_max^2
    start_noise = 0.05
    start_omega = 1.0
    hanging = False

    def __init__(self, n_agents: int = 2, n_controls: int = 5, theta_star: float = 0.5) -> None:
        super().__init__(n_agents)
        if n_controls < 3 or n_controls % 2 == 0:
            raise ValueError(f"n_controls must be odd and >= 3 (to include 0); got {n_controls}")
        if not 0.0 < theta_star < np.pi / 2:
            raise ValueError(f"theta_star must lie in (0, pi/2); got {theta_star}")
        self.theta_star = theta_star
        self.holding_torque = float(self.mass * self.gravity * self.length * np.sin(theta_star))
        self.u_max = float(self.holding_torque / (n_agents - 0.5))
        self.c = self.effort_cost / self.u_max**2
        self.controls = _frozen(np.linspace(-self.u_max, self.u_max, n_controls))
        self._targets = _frozen(_spread(self.theta_star, self.target_spread, n_agents))

    def reset(self, rng: np.random.Generator, batch: int) -> Array:
        if self.hanging:
            noise = rng.uniform(-self.start_noise, self.start_noise, size=(batch, 2))
            return np.stack([wrap(np.pi + noise[:, 0]), noise[:, 1]], axis=1)
        theta = rng.uniform(-np.pi, np.pi, size=batch)
        omega = rng.uniform(-self.start_omega, self.start_omega, size=batch)
        return np.stack([wrap(theta), omega], axis=1)

    def f(self, x: Array, u: Array) -> Array:
        theta, omega = x[:, 0], x[:, 1]
        torque = u.sum(axis=1) / (self.mass * self.length**2)
        accel = self.gravity / self.length * np.sin(theta) - self.damping * omega + torque
        omega_next = omega + self.dt * accel
        return np.stack([wrap(theta + self.dt * omega_next), omega_next], axis=1)

    def g(self, x: Array, u: Array) -> Array:
        error = wrap(x[:, :1] - self._targets[None, :])
        return -(error**2) - self.c * u**2

    def features(self, x: Array) -> Array:
        """(cos theta, sin theta, omega): the angle without its jump at the bottom."""
        return np.stack([np.cos(x[:, 0]), np.sin(x[:, 0]), x[:, 1]], axis=1)

    def in_goal(self, x: Array) -> NDArray[np.bool_]:
        near = self.goal_error(x) < self.angle_band
        return near & (np.abs(x[:, 1]) < self.omega_band)

    def goal_error(self, x: Array) -> Array:
        out: Array = np.abs(wrap(x[:, 0] - self.theta_star))
        return out


class Integrator(ControlTask):
    """The linear double integrator pushed from p = -1 to p* = 0 by the sum of N forces
    (a sanity task: any one agent can do it alone)."""

    name = "integrator"
    state_dim = 2
    horizon = 100
    dt = 0.1
    start = -1.0
    target = 0.0
    target_spread = 0.05
    position_band = 0.05
    velocity_band = 0.1
    effort_cost = 0.01
    start_noise = 0.05

    def __init__(self, n_agents: int = 2) -> None:
        super().__init__(n_agents)
        self.controls = _frozen(np.linspace(-1.0, 1.0, 5))
        self._targets = _frozen(_spread(self.target, self.target_spread, n_agents))

    def reset(self, rng: np.random.Generator, batch: int) -> Array:
        p = self.start + rng.uniform(-self.start_noise, self.start_noise, size=batch)
        return np.stack([p, np.zeros(batch)], axis=1)

    def f(self, x: Array, u: Array) -> Array:
        p, v = x[:, 0], x[:, 1]
        return np.stack([p + self.dt * v, v + self.dt * u.sum(axis=1)], axis=1)

    def g(self, x: Array, u: Array) -> Array:
        error = x[:, :1] - self._targets[None, :]
        return -self.distance_cost(error) - self.effort_cost * u**2

    def distance_cost(self, error: Array) -> Array:
        """What an agent pays a step for the position's `error` from its target: its square."""
        out: Array = error**2
        return out

    def in_goal(self, x: Array) -> NDArray[np.bool_]:
        near = self.goal_error(x) < self.position_band
        return near & (np.abs(x[:, 1]) < self.velocity_band)

    def goal_error(self, x: Array) -> Array:
        out: Array = np.abs(x[:, 0] - self.target)
        return out


class Stiction(Integrator):
    """The double integrator held by static friction that only all N agents pushing together
    can break loose: push it from p = 0 to p* = 1 and stop it there (see the module
    docstring)."""

    name = "stiction"
    start = 0.0
    target = 1.0
    target_spread = 0.02
    velocity_band = 0.05
    start_noise = 0.02

    def __init__(self, n_agents: int = 2) -> None:
        super().__init__(n_agents)
        self.friction = n_agents - 0.5
        """Static and kinetic: N agents at full force exceed it, N - 1 do not."""

    def f(self, x: Array, u: Array) -> Array:
        p, v = x[:, 0], x[:, 1]
        force = u.sum(axis=1)
        moving = v != 0.0
        direction = np.where(moving, np.sign(v), np.sign(force))
        loose = moving | (np.abs(force) > self.friction)
        v_next = np.where(loose, v + self.dt * (force - self.friction * direction), 0.0)
        v_next = np.where(moving & (v_next * v <= 0.0), 0.0, v_next)  # friction stops it
        return np.stack([p + self.dt * v_next, v_next], axis=1)


class StictionL1(Stiction):
    """The stiction cart whose agents pay their distance from their targets, not its square
    (see the module docstring)."""

    name = "stiction-l1"

    def distance_cost(self, error: Array) -> Array:
        out: Array = np.abs(error)
        return out


class HangingPendulum(Pendulum):
    """The pendulum, every episode started hanging down: the swing-up every time."""

    name = "pendulum-hanging"
    hanging = True


CONTROL_TASKS: dict[str, type[ControlTask]] = {
    t.name: t for t in (Pendulum, HangingPendulum, Integrator, Stiction, StictionL1)
}


def make_control_task(name: str, n_agents: int, controls: int | None = None) -> ControlTask:
    """The control task called `name` for `n_agents` agents (1 to 16), a Gymnasium plant's
    with `controls` controls per agent if given; a ValueError names the choices for an
    unknown name."""
    if (env := gym_id(name)) is not None:
        from market.gym_control import N_CONTROLS, GymControl

        return GymControl(env, n_agents, controls or N_CONTROLS)
    try:
        cls = CONTROL_TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown control task {name!r}; choose one of: {', '.join(CONTROL_TASKS)}, or "
            "gym:ID for a Gymnasium env with a Box action space"
        ) from None
    return cls(n_agents)
