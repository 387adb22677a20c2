"""The cooperative-control Q-learner (TER, IER, IQL, psi) on hand-made data and fake systems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from agents import control_replay
from agents.control_replay import (
    distinct_uniform,
    draw_without_replacement,
    macro_batch_size,
    rank_probabilities,
)
from agents.dqn_control import (
    ControlDQN,
    blame_rate,
    coordination,
    coordination_experiences,
    exploration_rate,
    imagined_controls,
    imagined_without_others,
    impact,
    iql_rate,
    schedule_epsilon,
)
from agents.q_bank import QBank, RateAdam
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


def test_rank_probabilities_favour_the_newest_and_sum_to_one() -> None:
    """P(j) ∝ tau_j^rho, tau_j = (j + 1) / n over a macro-batch sorted oldest first."""
    assert np.allclose(rank_probabilities(3, 1.0), [1 / 6, 2 / 6, 3 / 6])
    assert np.allclose(rank_probabilities(3, 2.0), np.array([1, 4, 9]) / 14)
    assert np.allclose(rank_probabilities(4, 0.0), 0.25)  # rho = 0: uniform


def test_distinct_uniform_draws_uniform_subsets() -> None:
    """Each row holds b distinct sorted values, and every value is in a row w.p. b / size."""
    rows = distinct_uniform(np.random.default_rng(0), 10, (20_000, 6))
    assert np.all(np.diff(rows, axis=1) > 0)
    assert np.allclose(np.bincount(rows.ravel(), minlength=10) / 20_000, 0.6, atol=0.015)
    pairs = ((rows == 0).any(axis=1) & (rows == 1).any(axis=1)).mean()
    assert abs(pairs - 6 / 10 * 5 / 9) < 0.015  # pairs too, as a uniform 6-subset has them


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
        rows = learner.sample_rows(0.0)[:, 0]
        assert rows.shape == (2, 64) and all(len(set(r)) == 64 for r in rows)
        means.append(learner.buffer.k[rows].mean())
    assert means[0] < 1800 < 2000 < means[1], means  # k counts env steps: 0..2999


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
    assert torch.allclose(q[0, 0], q[0, 1], rtol=0, atol=1e-6)  # BLAS rounds rows apart
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
    late, s = {"epsilon_start": 0.0, "epsilon_end": 0.0}, CONFIG.imagined
    opposed, together = np.array([[0, 2]]), np.array([[2, 2]])
    assert filled("full", 0, opposed, **late).update()["coordination"] == 3 * s
    assert filled("full", 0, together, **late).update()["coordination"] == 0
    assert filled("ier", 0, together, **late).update()["coordination"] == 3 * s
    early = filled("full", 0, together, epsilon_steps=10**9).update()  # eps = 1: alone only
    assert early["alone"] == s and early["coordination"] == 0


def test_config_names_the_methods_and_rejects_inconsistent_settings() -> None:
    """for_method sets each method's switches, which overrides may turn off; bad rates, bands
    or psi alone are errors."""
    full = ControlDQNConfig.for_method("full")
    assert full.ter and full.ier and full.iql and full.psi
    assert not any(getattr(ControlDQNConfig.for_method("independent"), s) for s in METHODS["full"])
    assert ControlDQNConfig.for_method("ier").ier and not ControlDQNConfig.for_method("ier").iql
    ablated = ControlDQNConfig.for_method("full", psi=False)  # an override turns a switch off
    assert ablated.ter and ablated.ier and ablated.iql and not ablated.psi
    for bad in ({"psi": True}, {"beta": 1e-3}, {"lambda_high": 0.9}, {"imagined": 65}):
        with pytest.raises(ValueError):
            ControlDQNConfig(**bad)
    with pytest.raises(ValueError, match="unknown method"):
        ControlDQNConfig.for_method("vdn")


def test_eps_anneals_to_zero_and_exploration_keeps_its_floor() -> None:
    """eps_k goes 1 -> 0 linearly over the schedule; acting explores at max(eps_k, 0.05)."""
    config = ControlDQNConfig()
    ks = (0, 50, 96, 100, 500)
    assert [schedule_epsilon(k, config, 100) for k in ks] == pytest.approx([1, 0.5, 0.04, 0, 0])
    assert [exploration_rate(k, config, 100) for k in ks] == pytest.approx(
        [1, 0.5, 0.05, 0.05, 0.05]
    )


def test_the_schedule_is_a_fraction_of_the_budget_unless_set() -> None:
    """By default eps anneals over half the run's env steps; epsilon_steps overrides."""
    assert ControlDQNConfig().schedule_steps(200_000) == 100_000
    assert ControlDQNConfig(epsilon_fraction=0.25).schedule_steps(40_000) == 10_000
    assert ControlDQNConfig(epsilon_steps=7).schedule_steps(200_000) == 7
    assert ControlDQN(Integrator(), budget=30_000).schedule == 15_000


def test_imagined_experiences_never_outnumber_the_real_ones_by_default() -> None:
    """IER's constant of proportionality: t/4 samples imagined, so 3 coordination
    experiences each stay fewer than the t real ones."""
    assert 4 * CONFIG.imagined == CONFIG.minibatch and 3 * CONFIG.imagined < CONFIG.minibatch


def test_ter_macro_batch_reaches_b_at_the_end_of_annealing(monkeypatch: pytest.MonkeyPatch) -> None:
    """B_k = t at the start, B once the schedule has run, although exploration keeps 0.05."""
    overrides = {"epsilon_steps": 100, "macro_batch": 80, "minibatch": 8, "imagined": 8}
    learner = filled("ter", 0, np.array([[0, 2]]), **overrides)
    assert learner.epsilon == pytest.approx(0.05) and learner.schedule_epsilon == 0.0
    sizes: list[int] = []
    original = control_replay.distinct_uniform

    def noted(rng: np.random.Generator, size: int, shape: tuple[int, int]) -> NDArray[np.int64]:
        sizes.append(shape[1])
        return original(rng, size, shape)

    monkeypatch.setattr("agents.dqn_control.distinct_uniform", noted)
    learner.update()
    assert sizes == [80]  # B for both agents (the exploration rate would give 76)
    assert macro_batch_size(8, 80, 1.0) == 8


def test_concurrent_episodes_get_their_own_step_index() -> None:
    """Experiences of one instant, across concurrent episodes, never share TER's k."""
    learner = ControlDQN(Integrator())
    for _ in range(3):
        learner.observe(np.zeros((5, 1)), np.zeros((5, 2)), np.ones((5, 2), np.int64),
                        np.zeros((5, 2)), np.zeros((5, 1)))  # fmt: skip
    assert np.array_equal(learner.buffer.k[:15], np.arange(15))


def test_a_sample_at_beta_moves_the_net_beta_over_alpha_as_far() -> None:
    """IQL's rates are step sizes: the same minibatch trained all at beta moves every
    parameter beta / alpha as far as all at alpha (under Adam's normalisation too)."""
    moved = {}
    for rate in (CONFIG.alpha, CONFIG.beta):
        learner = filled("independent", 0, np.array([[0, 2]]))
        parts = [learner.experienced(learner.buffer.view(np.tile(np.arange(64), (2, 1)),
                                                          Integrator.controls))]  # fmt: skip
        steps = learner._steps(parts, 1)
        scaled = steps._replace(gain=steps.gain * rate / CONFIG.alpha,
                                blame=steps.blame * rate / CONFIG.alpha)  # fmt: skip
        before = [p.detach().clone() for p in learner.online.parameters()]
        learner._step(scaled, 0, last=True)
        after = list(learner.online.parameters())
        moved[rate] = torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)])
    ratio = moved[CONFIG.beta].norm() / moved[CONFIG.alpha].norm()
    assert float(ratio) == pytest.approx(CONFIG.beta / CONFIG.alpha, rel=1e-3)
    assert torch.allclose(moved[CONFIG.beta], moved[CONFIG.alpha] * 0.01, rtol=0.01, atol=1e-7)


def test_rate_adam_is_adam_when_every_rate_is_alpha() -> None:
    """With the rated gradient equal to the unit one, RateAdam steps exactly like torch's Adam."""
    generator = torch.Generator().manual_seed(0)
    bank = QBank(2, 3, 4, 8, generator).requires_grad_(False)
    reference = QBank(2, 3, 4, 8, torch.Generator().manual_seed(0))
    ours, adam = (
        RateAdam(list(bank.parameters()), 1e-2),
        torch.optim.Adam(reference.parameters(), 1e-2),
    )
    for k in range(3):
        x = torch.randn(2, 5, 3, generator=generator)
        trace = bank.trace(QBank.with_ones(x))
        d_q = torch.zeros_like(trace[-1])
        d_q[..., :4] = trace[-1][..., :4] - k  # the gradient of 0.5 (Q - k)^2
        ours.step(bank.gradients(trace[:-1], d_q, torch.ones(2, 5, 1)))
        adam.zero_grad()
        (0.5 * (reference(x) - k) ** 2).sum().backward()
        for q, frozen in zip(reference.parameters(), reference.trainable, strict=True):
            q.grad.mul_(frozen)  # type: ignore[union-attr]  # the constant column stays
        adam.step()
    for p, q in zip(bank.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_negative_experiences_blame_the_responsible_strongly() -> None:
    """delta <= 0 (methods.md Part 2, IQL): alpha if lambda >= lambda_low, else beta, whatever
    psi says."""
    lam = np.array([0.0, 0.1, 0.25, 0.5, 1.0])  # N = 2: lambda_low = 0.25
    a, b = CONFIG.alpha, CONFIG.beta
    assert np.allclose(blame_rate(lam, 0.25, CONFIG), [b, b, a, a, a])
    delta = np.array([-1.0, -1, 0, -1, 0])
    for psi in (None, np.ones(5), -np.ones(5)):
        assert np.allclose(iql_rate(delta, lam, CONFIG, 2, psi), [b, b, a, a, a])


def test_coordination_experiences_take_beta_only_under_psi() -> None:
    """With psi the coordination experiences train at beta; with IER and IQL but no psi,
    IQL's rule rates them like any other sample."""
    actions = np.array([[0, 2]])  # opposed: psi = -1, lambda = 1/2 each
    for psi in (True, False):
        late = {"epsilon_start": 0.0, "epsilon_end": 0.0}
        learner = (
            filled("full", 0, actions, **late)
            if psi
            else filled("ier", 0, actions, iql=True, **late)
        )
        batch = learner.buffer.view(np.tile(np.arange(64), (2, 1)), Integrator.controls)
        part = learner._imagined(batch, 0.0)
        assert part is not None and (part.kind > 1).all()
        (gain,), (blame,) = learner._rates([part], 2)
        if psi:
            assert np.allclose(gain, CONFIG.beta / CONFIG.alpha)
            assert np.allclose(blame, CONFIG.beta / CONFIG.alpha)
        else:
            assert np.isnan(part.rate).all()
            lam = impact(part.joint)[np.arange(2), :, np.arange(2)]
            assert np.allclose(blame, iql_rate(np.zeros_like(lam), lam, CONFIG, 2) / CONFIG.alpha)


def test_imagined_controls_are_controls_of_the_set_that_f_and_g_see() -> None:
    """Agent i's imagined control in idle and coop1 is the control of U nearest 0 and the
    others' mean; the trained action is that control, and f and g see the same value."""

    class NoZero(Integrator):
        controls = np.array([-1.0, -0.3, 0.5, 1.0])

    learner = ControlDQN(NoZero(), ControlDQNConfig.for_method("ier", epsilon_start=0.0,
                                                                 epsilon_end=0.0))  # fmt: skip
    acts = np.array([[0, 3], [3, 2], [1, 1]])
    for row in acts:
        x = np.array([[0.5]])
        u = NoZero.controls[row][None]
        learner.observe(x, np.zeros((1, 2)), row[None], NoZero().g(x, u), NoZero().f(x, u))
    batch = learner.buffer.view(np.array([[0, 1, 2], [0, 1, 2]]), NoZero.controls)
    joints = imagined_controls(NoZero.controls, batch.u)
    assert np.allclose(joints[0, 1, :, 0], -0.3)  # idle: nearest 0, not 0 itself
    assert np.allclose(joints[0, 2, :, 0], [1.0, 0.5, -0.3])  # coop1: the partner's own
    learner.config = learner.config.model_copy(update={"imagined": 3, "minibatch": 3})
    part = learner._imagined(batch, 0.0)
    assert part is not None
    own = part.joint[np.arange(2), :, np.arange(2)]
    assert np.array_equal(NoZero.controls[part.action], own)  # trained == seen by f and g
    assert np.allclose(part.reward, NoZero().g(np.full((2 * part.mask.shape[1], 1), 0.5),
                                               part.joint.reshape(-1, 2)).reshape(2, -1, 2)
                       [np.arange(2), :, np.arange(2)])  # fmt: skip


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
