"""The cooperative-control Q-learner (TER, IER, IQL, psi) on hand-made data and fake systems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from agents.dqn_control import (
    ControlDQN,
    coordination,
    coordination_experiences,
    draw_without_replacement,
    epsilon_at,
    imagined_without_others,
    impact,
    iql_rate,
    macro_batch_size,
    recency_probabilities,
)
from agents.settings import METHODS, ControlDQNConfig

torch.set_num_threads(1)

F = NDArray[np.float64]


class Linear:
    """Three agents on x' = A x + Bu u (d = 2); agent i earns -|x|^2 - c_i u_i^2."""

    n_agents = 3
    state_dim = 2
    controls = np.array([-1.0, -0.4, 0.0, 0.4, 1.0])
    a = np.array([[1.0, 0.5], [0.0, 1.0]])
    b = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]])
    c = np.array([1.0, 2.0, 3.0])

    def f(self, x: F, u: F) -> F:
        """Linear dynamics, batched."""
        out: F = x @ self.a.T + u @ self.b.T
        return out

    def g(self, x: F, u: F) -> F:
        """Quadratic rewards; column i reads x and u_i only."""
        out: F = -(x**2).sum(axis=1, keepdims=True) - self.c * u**2
        return out


class Integrator:
    """Two agents push x' = clip(x + (u_1 + u_2) / 4); each earns -x^2 - u_i^2 / 100."""

    n_agents = 2
    state_dim = 1
    controls = np.array([-1.0, 0.0, 1.0])

    def f(self, x: F, u: F) -> F:
        """The integrator, batched."""
        out: F = np.clip(x + 0.25 * u.sum(axis=1, keepdims=True), -2.0, 2.0)
        return out

    def g(self, x: F, u: F) -> F:
        """Distance to 0 plus a little effort."""
        out: F = -(x**2) - 0.01 * u**2
        return out


CONFIG = ControlDQNConfig()
X = np.array([[1.0, 2.0]])
U = np.array([[-1.0, 1.0, -0.4]])


def test_macro_batch_grows_from_t_to_b_as_exploration_ends() -> None:
    """TER's B_k = t + (B - t)(1 - eps): t at eps = 1, halfway at 0.5, B at 0."""
    assert macro_batch_size(64, 1024, 1.0) == 64
    assert macro_batch_size(64, 1024, 0.5) == 544
    assert macro_batch_size(64, 1024, 0.0) == 1024


def test_recency_probabilities_favour_the_newest_and_sum_to_one() -> None:
    """P(j) ∝ tau_j^rho, tau_j = recency rank / n: newest 1, ties share a rank."""
    p = recency_probabilities(np.array([7, 2, 5]), 1.0)
    assert np.allclose(p, [3 / 6, 1 / 6, 2 / 6])
    p2 = recency_probabilities(np.array([7, 2, 5]), 2.0)
    assert np.allclose(p2, np.array([9, 1, 4]) / 14)
    assert np.allclose(recency_probabilities(np.array([5, 5, 1]), 1.0), [3 / 7, 3 / 7, 1 / 7])
    rows = recency_probabilities(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]), 1.0)
    assert np.allclose(rows.sum(axis=1), 1) and np.allclose(rows[0], rows[1, ::-1])


def test_recency_exponent_zero_samples_uniformly() -> None:
    """rho = 0 gives every experience of the macro-batch the same probability."""
    assert np.allclose(recency_probabilities(np.array([9, 1, 4, 4]), 0.0), 0.25)


def test_drawing_without_replacement_follows_the_sequential_probabilities() -> None:
    """Two draws from p = (0.5, 0.3, 0.2) without replacement: no repeats, and position 0 is
    drawn with probability 0.5 + 0.3 * 0.5 / 0.7 + 0.2 * 0.5 / 0.8 (first or second)."""
    p = np.tile([0.5, 0.3, 0.2], (40_000, 1))
    drawn = draw_without_replacement(p, 2, np.random.default_rng(0))
    assert drawn.shape == (40_000, 2) and np.all(drawn[:, 0] != drawn[:, 1])
    included = (drawn == 0).any(axis=1).mean()
    assert abs(included - (0.5 + 0.3 * 0.5 / 0.7 + 0.2 * 0.5 / 0.8)) < 0.01
    first = draw_without_replacement(p, 1, np.random.default_rng(1))[:, 0]
    assert np.allclose(np.bincount(first, minlength=3) / 40_000, [0.5, 0.3, 0.2], atol=0.01)
    never = draw_without_replacement(np.array([[0.5, 0.5, 0.0]] * 500), 2, np.random.default_rng(2))
    assert not (never == 2).any()  # a zero-probability position is never drawn


def test_ter_samples_recent_experiences_more_once_exploration_ends() -> None:
    """With TER at eps = 0 the minibatch is newer on average than a uniform one."""
    rng = np.random.default_rng(0)
    means = []
    for method in ("independent", "ter"):
        learner = ControlDQN(Integrator(), ControlDQNConfig.for_method(method, rho=2.0), seed=1)
        for _ in range(300):  # steps k = 0..299 of 10 systems each
            x = rng.normal(size=(10, 1))
            learner.observe(x, np.zeros((10, 2)), np.ones((10, 2), np.int64), -(x**2), x)
        rows = learner.sample_rows(0.0)
        assert rows.shape == (2, 64) and all(len(set(r)) == 64 for r in rows)
        means.append(learner.buffer.k[rows].mean())
    assert means[0] < 180 < 200 < means[1], means


def test_others_removed_experience_by_hand() -> None:
    """IER alone: x' = f(x, u_i, 0), r = g_i(x, u_i, 0)."""
    next_x, reward = imagined_without_others(Linear(), X, U, 0)
    assert np.allclose(next_x, [[1.0, 2.0]]) and np.allclose(reward, [-6.0])
    next_x, reward = imagined_without_others(Linear(), X, U, 2)
    assert np.allclose(next_x, [[0.8, 2.4]]) and np.allclose(reward, [-5.48])


def test_coordination_experiences_by_hand() -> None:
    """idle u_0 = 0; coop1 u_0 = mean(1, -0.4) = 0.3 snapped to 0.4; coop2 all take -1."""
    (idle_x, idle_r), (c1_x, c1_r), (c2_x, c2_r) = coordination_experiences(Linear(), X, U, 0)
    assert np.allclose(idle_x, [[2.8, 3.4]]) and np.allclose(idle_r, [-5.0])
    assert np.allclose(c1_x, [[3.2, 3.4]]) and np.allclose(c1_r, [-5.16])
    assert np.allclose(c2_x, [[-4.0, 2.0]]) and np.allclose(c2_r, [-6.0])
    _, (c1_x, c1_r), _ = coordination_experiences(Linear(), X, U, 2)  # mean(-1, 1) = 0
    assert np.allclose(c1_x, [[3.0, 3.0]]) and np.allclose(c1_r, [-5.0])


def test_impact_is_the_share_of_absolute_control_and_equal_when_all_idle() -> None:
    """lambda_i = |u_i| / sum_j |u_j|, and 1/N when every control is 0."""
    lam = impact(np.array([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    assert np.allclose(lam, [[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]])


def test_iql_rate_follows_the_table_for_every_case() -> None:
    """delta > 0: alpha / sigma / beta above / in / below the band; delta <= 0: alpha / beta."""
    a, s, b = CONFIG.alpha, CONFIG.sigma, CONFIG.beta  # N = 2: band [0.25, 0.75]
    lam = np.array([0.9, 0.75, 0.5, 0.25, 0.1, 0.9, 0.25, 0.1, 0.5, 0.1])
    delta = np.array([1.0, 1, 1, 1, 1, -1, -1, -1, 0, 0])
    expected = [a, s, s, s, b, a, a, b, a, b]
    assert np.allclose(iql_rate(delta, lam, CONFIG, 2), expected)
    assert np.allclose(iql_rate(delta, lam / 2, CONFIG, 4), expected)  # band scales with 1/N


def test_psi_plus_one_promotes_sigma_to_alpha_and_nothing_else() -> None:
    """Where psi = +1 the band's sigma becomes alpha; psi = -1 keeps the table."""
    a, s, b = CONFIG.alpha, CONFIG.sigma, CONFIG.beta
    lam, delta = np.array([0.5, 0.9, 0.1, 0.5, 0.1]), np.array([1.0, 1, 1, -1, -1])
    plus, minus = np.ones(5), -np.ones(5)
    assert np.allclose(iql_rate(delta, lam, CONFIG, 2, plus), [a, a, b, a, b])
    assert np.allclose(iql_rate(delta, lam, CONFIG, 2, minus), [s, a, b, a, b])


def test_psi_is_the_sign_of_own_control_times_the_others_sum_and_plus_one_at_zero() -> None:
    """psi_i = sgn(u_i sum_{j != i} u_j), +1 where the product is 0."""
    u = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, -0.5]])
    psi = coordination(u)
    assert np.array_equal(psi, [[1, 1, 1], [-1, -1, 1], [1, 1, 1], [-1, -1, 1]])
    assert coordination(np.array([[-0.2, 0.8, -0.8]]))[0, 0] == 1  # 0.8 - 0.8 is exactly 0


def test_the_learner_counts_the_fraction_of_steps_with_psi_plus_one() -> None:
    """Observed joint controls (+,+), (+,-), (0,+), (-,-) give 3/4 coordinating steps."""
    learner = ControlDQN(Integrator())
    actions = np.array([[2, 2], [2, 0], [1, 2], [0, 0]])
    learner.observe(np.zeros((4, 1)), np.zeros((4, 2)), actions, np.zeros((4, 2)), np.zeros((4, 1)))
    assert np.allclose(learner.coordinating_fraction, [0.75, 0.75])


def test_an_agents_input_never_holds_the_others_current_control() -> None:
    """Changing u_{1,k} but not u_{1,k-1} leaves agent 0's input, Q-values and action alone."""
    learner = ControlDQN(Linear(), seed=3)
    prev = np.array([[0.4, -1.0, 1.0]])
    for other in (0, 4):  # agent 1's current control: -1, then +1
        actions = np.array([[1, other, 2]])
        learner.observe(X, prev, actions, np.zeros((1, 3)), Linear().f(X, Linear.controls[actions]))
    batch = learner.buffer.view(np.array([[0, 1], [0, 1], [0, 1]]), Linear.controls)
    part = learner.experienced(batch)  # the inputs the update trains on
    inputs, next_inputs = part.inputs, part.next_inputs
    assert np.array_equal(inputs[0, 0], inputs[0, 1]) and np.allclose(inputs[0, 0], [1, 2, -1, 1])
    q = learner.online(torch.as_tensor(inputs, dtype=torch.float32)).detach()
    assert torch.equal(q[0, 0], q[0, 1])
    assert next_inputs[0, 0, 2] == -1.0 and next_inputs[0, 1, 2] == 1.0  # known at k + 1
    assert np.allclose(learner.q_values(X, prev)[0, 0], q[0, 0].double().numpy(), atol=1e-6)
    changed = prev.copy()
    changed[0, 1] = 0.4  # u_{1,k-1} does enter agent 0's input
    assert not np.allclose(learner.q_values(X, changed)[0], learner.q_values(X, prev)[0])
    assert learner.act(X, prev, 0.0)[0, 0] == int(q[0, 0].argmax())  # both variants' action


def test_one_batched_forward_gives_every_agents_own_q_values() -> None:
    """One pass of the stacked nets gives (N, B, M); slice i is agent i's own net on its input."""
    learner = ControlDQN(Linear(), seed=5)
    calls: list[int] = []
    learner.online.register_forward_hook(lambda *_: calls.append(1))
    rng = np.random.default_rng(0)
    x, prev = rng.normal(size=(6, 2)), rng.choice(Linear.controls, size=(6, 3))
    q = learner.q_values(x, prev)
    assert len(calls) == 1 and q.shape == (3, 6, 5)
    ws = [w.detach().double().numpy() for w in learner.online.weights]
    bs = [b.detach().double().numpy() for b in learner.online.biases]
    for i in range(3):
        h = np.concatenate([x, np.delete(prev, i, axis=1)], axis=1)
        for layer in range(3):
            h = h @ ws[layer][i] + bs[layer][i]
            h = np.maximum(h, 0) if layer < 2 else h
        assert np.allclose(q[i], h[:, :5], atol=1e-5)
        assert np.all(h[:, 5:] == 0)  # the output layer's padding stays zero


def filled(method: str, seed: int, actions: NDArray[np.int64], **overrides: float) -> ControlDQN:
    """A learner of `method` whose buffer holds 100 integrator steps of the given controls."""
    config = ControlDQNConfig.for_method(method, **overrides)
    learner = ControlDQN(Integrator(), config, seed=seed)
    rng = np.random.default_rng(7)
    task = Integrator()
    for _ in range(100):
        x = rng.uniform(-1, 1, size=(1, 1))
        prev = rng.choice(task.controls, size=(1, 2))
        u = task.controls[actions]
        learner.observe(x, prev, actions, task.g(x, u), task.f(x, u))
    return learner


def test_same_seed_gives_the_same_weights_after_updates() -> None:
    """One seed gives identical initial and updated weights; another seed other weights."""
    actions = np.array([[0, 2]])
    runs = [filled("full", seed, actions, epsilon_steps=150) for seed in (4, 4, 5)]
    first = [[p.detach().clone() for p in r.online.parameters()] for r in runs]
    assert all(torch.equal(p, q) for p, q in zip(first[0], first[1], strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(first[0], first[2], strict=True))
    for learner in runs:
        for _ in range(5):
            learner.update()
        bank = learner.online  # the output layer's padding has had no gradient: still zero
        assert torch.all(bank.weights[-1][..., bank.n_out :] == 0)
        assert torch.all(bank.biases[-1][..., bank.n_out :] == 0)
    a, b, c = ([p.detach().clone() for p in r.online.parameters()] for r in runs)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_the_update_weighs_each_sample_by_its_iql_rate_over_alpha() -> None:
    """Idle agent 0 (lambda 0) trains at beta, acting agent 1 (lambda 1) at alpha; psi promotes."""
    actions = np.array([[1, 2]])
    ratio = CONFIG.beta / CONFIG.alpha
    assert filled("iql", 0, actions).update()["rate"] == pytest.approx((ratio + 1) / 2)
    assert filled("independent", 0, actions).update()["rate"] == 1.0
    together = np.array([[2, 2]])  # lambda = 1/2 in the band, psi = +1: sigma becomes alpha
    assert filled("iql", 0, together).update()["rate"] < 1.0
    assert filled("full", 0, together).update()["rate"] == 1.0


def test_coordination_experiences_only_where_psi_is_minus_one_in_full() -> None:
    """At eps = 0 full imagines idle/coop1/coop2 for opposed controls only; plain IER always."""
    late = {"epsilon_start": 0.0, "epsilon_end": 0.0}
    opposed, together = np.array([[0, 2]]), np.array([[2, 2]])
    assert filled("full", 0, opposed, **late).update()["coordination"] == 3 * 64
    assert filled("full", 0, together, **late).update()["coordination"] == 0
    assert filled("ier", 0, together, **late).update()["coordination"] == 3 * 64
    early = filled("full", 0, together, epsilon_end=1.0).update()  # eps = 1: alone only
    assert early["alone"] == 64 and early["coordination"] == 0


def test_config_names_the_methods_and_rejects_inconsistent_settings() -> None:
    """for_method sets each method's switches; bad rates, bands or psi alone are errors."""
    full = ControlDQNConfig.for_method("full")
    assert full.ter and full.ier and full.iql and full.psi
    assert not any(getattr(ControlDQNConfig.for_method("independent"), s) for s in METHODS["full"])
    assert ControlDQNConfig.for_method("ier").ier and not ControlDQNConfig.for_method("ier").iql
    for bad in ({"psi": True}, {"beta": 1e-3}, {"lambda_high": 0.9}, {"imagined": 65}):
        with pytest.raises(ValueError):
            ControlDQNConfig(**bad)
    with pytest.raises(ValueError, match="unknown method"):
        ControlDQNConfig.for_method("vdn")


def test_epsilon_falls_linearly_then_stays() -> None:
    """eps goes 1 -> 0.05 linearly over epsilon_steps, then stays at 0.05."""
    config = ControlDQNConfig(epsilon_steps=100)
    assert [epsilon_at(k, config) for k in (0, 50, 100, 500)] == pytest.approx(
        [1.0, 0.525, 0.05, 0.05]
    )


def greedy_return(learner: ControlDQN, task: Integrator) -> float:
    """Both agents' summed reward over 10 greedy steps, averaged over 8 starts in [-1.5, 1.5]."""
    x, prev, total = np.linspace(-1.5, 1.5, 8)[:, None], np.zeros((8, 2)), 0.0
    for _ in range(10):
        u = task.controls[learner.act(x, prev, 0.0)]
        total += float(task.g(x, u).sum(axis=1).mean())
        x, prev = task.f(x, u), u
    return total


@pytest.mark.parametrize("method", ["independent", "full"])
def test_learning_drives_the_integrator_to_zero(method: str) -> None:
    """400 steps of 16 systems lift the greedy return far above idling (-19.3) and the start
    (exploration ends after 250 of them, 4,000 env steps)."""
    task, rng = Integrator(), np.random.default_rng(0)
    config = ControlDQNConfig.for_method(
        method, epsilon_steps=4000, minibatch=32, imagined=32, macro_batch=256, hidden=32,
        target_period=50,
    )  # fmt: skip
    learner = ControlDQN(task, config, seed=0)
    before = greedy_return(learner, task)
    for k in range(400):
        if k % 10 == 0:
            x, prev = rng.uniform(-1.5, 1.5, size=(16, 1)), np.zeros((16, 2))
        actions = learner.act(x, prev, learner.epsilon)
        u = task.controls[actions]
        learner.observe(x, prev, actions, task.g(x, u), task.f(x, u))
        x, prev = task.f(x, u), u
        learner.update()
    after = greedy_return(learner, task)
    assert after > -8.0 and after > before + 10, (before, after)
