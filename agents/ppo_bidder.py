"""The bidding primitive of Chang et al. (2020): a Beta-distributed bid learned with PPO.

Every primitive has its own bid policy psi and value net V; clones share them. For speed
the parameters of all P primitives are stacked, so one batched call draws the bids of every
bidder for a whole batch of states, and one update step trains every primitive (their
parameters, losses and gradient-norm clips stay separate). The states are one-hot, so each
net runs once per state and samples gather their rows from these (P, S) tables.

Policy: Beta(mu * nu, (1 - mu) * nu), mu = sigmoid(.), nu = softplus(.), on a linear layer of
width 16 over the one-hot state; the head starts at exactly Beta(1, 1), uniform on (0, 1).
Value: an MLP [state, 16, 1] with ReLU. Each bidder, winner or loser, contributes one sample
(s_t, its bid, its auction utility U_t) per auction: a contextual bandit, nothing bootstrapped.
PPO: advantage U - V(s) normalised over the batch, clip 0.2, entropy 0.1, one pass of
minibatches of 256 over 4096 samples, value loss MSE + 1e-3 L2, grad-norm 40, Adam 4e-5
(policy) and 5e-3 (value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.distributions import Beta

from agents.settings import PPOConfig

UNIFORM_NU = math.log(math.expm1(2.0))
"""softplus^-1(2): with mu = 1/2 this makes Beta(mu nu, (1 - mu) nu) = Beta(1, 1)."""
BETA_FLOOR = 1e-6
"""The least alpha and beta of a bid policy (`beta_head`)."""


def beta_head(mu_logit: torch.Tensor, nu_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bid policy's Beta(alpha, beta) from its head's two outputs: mu = sigmoid, nu =
    softplus, alpha = mu nu and beta = (1 - mu) nu, each at least `BETA_FLOOR`.

    The floor keeps a collapsing policy's arithmetic finite. Without an entropy bonus a
    policy can drive mu toward 0 (a bucket brigade's on CartPole did: alpha near 1e-20 after
    some 400k env steps). The entropy's gradient holds trigamma(alpha), about 1 / alpha^2,
    which overflows float32 there, and 0 x inf turned every weight NaN. At the floor a Beta
    already puts all but about 1e-5 of its mass within 1e-6 of 0 (of 1, for beta), where
    drawn bids are clipped anyway, so the floor changes hardly any bid a policy can draw;
    where it does not bind it changes nothing, bit for bit.
    """
    mu, nu = torch.sigmoid(mu_logit), nn.functional.softplus(nu_logit)
    return (mu * nu).clamp(min=BETA_FLOOR), ((1 - mu) * nu).clamp(min=BETA_FLOOR)


def _stacked(p: int, n_in: int, n_out: int, scale: float | None) -> nn.Parameter:
    """P independent weight matrices (p, n_in, n_out); zeros when `scale` is None."""
    w = torch.zeros(p, n_in, n_out)
    if scale is not None:
        nn.init.uniform_(w, -scale, scale)
    return nn.Parameter(w)


class BidderBank(nn.Module):
    """The bid policies and value nets of P primitives over one-hot states, stacked."""

    def __init__(self, n_primitives: int, n_states: int, hidden: int = 16) -> None:
        super().__init__()
        p, s, h = n_primitives, n_states, hidden
        bound = 1 / math.sqrt(s)
        self.enc_w, self.enc_b = _stacked(p, s, h, bound), nn.Parameter(torch.zeros(p, 1, h))
        self.head_w = _stacked(p, h, 2, None)  # zero weights: every state starts uniform
        self.head_b = nn.Parameter(torch.tensor([0.0, UNIFORM_NU]).repeat(p, 1, 1))
        self.v1_w, self.v1_b = _stacked(p, s, h, bound), nn.Parameter(torch.zeros(p, 1, h))
        self.v2_w, self.v2_b = (
            _stacked(p, h, 1, 1 / math.sqrt(h)),
            nn.Parameter(torch.zeros(p, 1, 1)),
        )
        self.n_states = n_states

    @torch.no_grad()
    def reset_row(self, row: int, generator: torch.Generator) -> None:
        """Initialise primitive `row`'s nets afresh, as the constructor does (uniform bids)."""
        s, h = self.n_states, self.enc_w.shape[-1]
        for w, bound in ((self.enc_w, 1 / math.sqrt(s)), (self.v1_w, 1 / math.sqrt(s))):
            w[row].uniform_(-bound, bound, generator=generator)
        self.v2_w[row].uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h), generator=generator)
        for b in (self.enc_b, self.head_w, self.v1_b, self.v2_b):
            b[row].zero_()
        self.head_b[row] = torch.tensor([[0.0, UNIFORM_NU]])

    def policy_params(self) -> list[nn.Parameter]:
        """The bid policy's parameters."""
        return [self.enc_w, self.enc_b, self.head_w, self.head_b]

    def value_params(self) -> list[nn.Parameter]:
        """The value net's parameters."""
        return [self.v1_w, self.v1_b, self.v2_w, self.v2_b]

    def policy_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each primitive's Beta parameters (alpha, beta) in every state: (P, S) each.

        Speed: a one-hot state times the encoder picks one row of its weight, so the net
        runs once per state, not once per sample, and samples gather from the table.
        """
        h = torch.relu(self.enc_w + self.enc_b)
        out = torch.baddbmm(self.head_b, h, self.head_w)
        return beta_head(*out.unbind(-1))

    def value_table(self) -> torch.Tensor:
        """Each primitive's V(s) in every state: (P, S), as `policy_table`."""
        h = torch.relu(self.v1_w + self.v1_b)
        return torch.baddbmm(self.v2_b, h, self.v2_w).squeeze(-1)

    def distribution(self, states: torch.Tensor) -> Beta:
        """Each primitive's bid distribution at each state: batch shape (P, m)."""
        alpha, beta = self.policy_table()
        return Beta(_per_sample(alpha, states), _per_sample(beta, states))

    def value(self, states: torch.Tensor) -> torch.Tensor:
        """Each primitive's V(s): shape (P, m)."""
        return _per_sample(self.value_table(), states)


def _per_sample(table: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(P, m) entries of a (P, S) table: shared states (m,), or (P, m) one batch each."""
    return table[:, states] if states.dim() == 1 else table.gather(1, states)


class PPOBidders:
    """Draws every bidder's bid in one call and trains every primitive with PPO."""

    def __init__(
        self,
        n_states: int,
        primitive_of: tuple[int, ...],
        config: PPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or PPOConfig()
        self.primitive_of = torch.tensor(primitive_of)
        self.n_primitives = int(max(primitive_of)) + 1
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        torch.manual_seed(int(torch_seed))  # parameter initialisation
        self.generator = torch.Generator().manual_seed(int(torch_seed))
        self.rng = np.random.default_rng(int(numpy_seed))
        self.bank = BidderBank(self.n_primitives, n_states, self.config.hidden)
        self._params = list(self.bank.parameters())
        # Speed: the fused Adam kernel, a third of the per-tensor loop's time on these shapes
        self.policy_opt = torch.optim.Adam(
            self.bank.policy_params(), lr=self.config.policy_lr, fused=True
        )
        self.value_opt = torch.optim.Adam(
            self.bank.value_params(), lr=self.config.value_lr, fused=True
        )
        self._table: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None

    @torch.no_grad()
    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Independent draws for every bidder at every state: shape (len(states), n_bidders).

        Clones draw separately from their primitive's one distribution; the draws come from
        the bank's own NumPy generator, so a seed fixes them.
        """
        alpha, beta = self._bid_table()
        return np.clip(self.rng.beta(alpha[:, states], beta[:, states]), 1e-6, 1 - 1e-6).T

    def _bid_table(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Every bidder's Beta parameters in every state, (n_bidders, n_states).

        Speed: the states are one-hot and the parameters change only at an update, so the
        table is computed once per update and bids are drawn from it without torch.
        """
        if self._table is None:
            with torch.no_grad():
                alpha, beta = self.bank.policy_table()
            self._table = (
                alpha[self.primitive_of].double().numpy(),
                beta[self.primitive_of].double().numpy(),
            )
        return self._table

    @torch.no_grad()
    def mean_bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Each primitive's mean bid at each state: shape (P, len(states))."""
        mean = self.bank.distribution(torch.as_tensor(states)).mean
        return np.asarray(mean.double().numpy(), dtype=np.float64)

    @torch.no_grad()
    def inherit(self, parent: int, child: int, sigma: float, fresh: bool = False) -> None:
        """Make row `child` a child of row `parent` (an economy's birth): a copy of the
        parent's nets and of their optimiser moments, the bid policy's parameters perturbed
        by Gaussian noise of standard deviation `sigma`; or, `fresh`, newly initialised nets
        with no moments. The noise comes from the learner's own generator."""
        if fresh:
            self.bank.reset_row(child, self.generator)
        for opt in (self.policy_opt, self.value_opt):
            for group in opt.param_groups:
                for p in group["params"]:
                    if not fresh:
                        p[child] = p[parent]
                    for key in ("exp_avg", "exp_avg_sq"):
                        moments = opt.state.get(p, {}).get(key)
                        if moments is not None:
                            moments[child] = 0 if fresh else moments[parent]
        if not fresh and sigma > 0:
            for p in self.bank.policy_params():
                noise = torch.randn(p[child].shape, generator=self.generator)
                p[child] += sigma * noise
        self.parameters_changed()

    def parameters_changed(self) -> None:
        """Forget the cached bid table (after an update or a loaded snapshot)."""
        self._table = None

    def update(
        self, states: NDArray[np.int64], bids: NDArray[np.float64], utilities: NDArray[np.float64]
    ) -> dict[str, float]:
        """One PPO pass over a batch per primitive: arrays of shape (P, batch).

        Speed: the batch is put in minibatch order once, so every minibatch is a slice, and
        what depends on the samples only (log-density features, old log-probabilities) is
        computed once per update.
        """
        cfg = self.config
        s = torch.as_tensor(states)
        b = torch.as_tensor(bids, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        u = torch.as_tensor(utilities, dtype=torch.float32)
        features = beta_features(b)
        with torch.no_grad():
            old_logp = self._log_prob(s, features)
        n = s.shape[1]
        order = torch.randperm(n, generator=self.generator)
        s, features, u, old_logp = s[:, order], features[:, order], u[:, order], old_logp[:, order]
        steps: list[tuple[torch.Tensor, ...]] = []
        for _ in range(cfg.epochs):
            for start in range(0, n, cfg.minibatch):
                mb = slice(start, start + cfg.minibatch)
                steps.append(self._step(s[:, mb], features[:, mb], u[:, mb], old_logp[:, mb]))
        self.parameters_changed()
        surrogate, mse, entropy, l2 = (torch.stack(x).double() for x in zip(*steps, strict=True))
        return {
            "policy_loss": float((-surrogate - cfg.entropy_coef * entropy).mean()),
            "value_loss": float((mse.mean(dim=1) + cfg.value_l2 * l2 / self.n_primitives).mean()),
            "entropy": float(entropy.mean()),
        }

    def _log_prob(self, s: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log psi(b | s) of each primitive's own samples (P, m), b as `beta_features(b)`."""
        return _beta_log_prob(beta_terms(*self.bank.policy_table())[0], s, features)

    def _step(
        self,
        s: torch.Tensor,
        features: torch.Tensor,
        u: torch.Tensor,
        old_logp: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One gradient step of every primitive on a minibatch (bids as `beta_features`).

        Returns, for the update's statistics, the minibatch means of the clipped surrogate,
        of the squared error and of the entropy (P,), and the value net's squared L2 norm.
        Speed: each op costs more than its arithmetic here, so the graph is kept small,
        with the same losses and gradients: min(r A, clip(r) A) is A clamp(r, low, high)
        with only the bound that can bind (1 + clip if A > 0, else 1 - clip); the policy
        and value losses, both means over the minibatch, are reduced together; the L2
        term's gradient, 2 value_l2 w, is added after the backward pass; the statistics
        are reduced once per update.
        """
        cfg = self.config
        values = self.bank.value_table().gather(1, s)
        with torch.no_grad():
            diff = u - values
            std, mean = torch.std_mean(diff, dim=1, keepdim=True)
            adv = (diff - mean) / (std + 1e-8)
            gain = adv > 0
            low = torch.where(gain, -math.inf, 1 - cfg.clip)
            high = torch.where(gain, 1 + cfg.clip, math.inf)
        table, entropy_table = beta_terms(*self.bank.policy_table())
        ratio = policy_ratio(_beta_log_prob(table, s, features), old_logp)
        surrogate = adv * torch.clamp(ratio, low, high)  # = min(ratio adv, clip(ratio) adv)
        entropy = entropy_table.gather(1, s).mean(dim=1)
        error = values - u
        squared_error = error * error  # Speed: cheaper to differentiate than error**2
        loss = (squared_error - surrogate).mean(dim=1) - cfg.entropy_coef * entropy
        for p in self._params:
            p.grad = None
        torch.autograd.backward(loss.sum())
        value_params: list[torch.Tensor] = list(self.bank.value_params())
        with torch.no_grad():
            flat = torch.cat([w.flatten() for w in value_params])
            stats = (surrogate.mean(1), squared_error.mean(1), entropy.detach(), flat @ flat)
        grads = [p.grad for p in value_params if p.grad is not None]
        torch._foreach_add_(grads, value_params, alpha=2 * cfg.value_l2)
        clip_per_primitive([self.bank.policy_params(), value_params], cfg.max_grad_norm)
        self.policy_opt.step()
        self.value_opt.step()
        return stats


_SIGN = torch.tensor([1.0, 1.0, -1.0])
"""With c = (alpha, beta, alpha + beta): log B(alpha, beta) = _SIGN . lgamma(c)."""
_SHIFT = torch.tensor([1.0, 1.0, 2.0])
"""Entropy of Beta(alpha, beta) = log B(alpha, beta) - _SIGN . ((c - _SHIFT) digamma(c))."""


def beta_terms(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-density table (..., 6) and the entropy (...) of Beta(alpha, beta) of shape (...):
    per state (P, S) here, per sample (P, m) in `ppo_vision_bidder.py`.

    With c = (alpha, beta, alpha + beta), a table row is (c - 1, lgamma(c)): its dot product
    with `beta_features(b)` is (alpha - 1) log b + (beta - 1) log(1 - b) - log B(alpha, beta),
    the log-density, and the entropy is log B - (alpha - 1) digamma(alpha) - (beta - 1)
    digamma(beta) + (alpha + beta - 2) digamma(alpha + beta).
    Speed: written out instead of torch.distributions, one lgamma and one digamma call.
    """
    c = torch.stack([alpha, beta, alpha + beta], dim=-1)
    lgamma = torch.lgamma(c)
    entropy = (lgamma - (c - _SHIFT) * torch.digamma(c)) @ _SIGN
    return torch.cat([c - 1, lgamma], dim=-1), entropy


LOG_RATIO_CAP = 20.0
"""The largest log-ratio log(pi / pi_old) a PPO step exponentiates (`policy_ratio`)."""


def policy_ratio(log_prob: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """pi / pi_old of each sample, its log capped at `LOG_RATIO_CAP`.

    A Beta's log-density is unbounded: once a bid policy is concentrated (bids near 0, a
    Beta(2, 3000) say), a sample drawn under the old policy can be hundreds of nats more
    likely under the new one. exp of that overflows float32 to inf; a negative advantage
    then makes the loss -inf and every gradient NaN, through the norm clip, into the
    weights. Beyond the cap the sample's surrogate is constant (no gradient), as the clip
    makes it for a positive advantage. Below it nothing changes, bit for bit.
    """
    return torch.exp(torch.clamp(log_prob - old, max=LOG_RATIO_CAP))


def beta_features(b: torch.Tensor) -> torch.Tensor:
    """(log b, log(1 - b), 0, -1, -1, 1) for bids b (P, m): shape (P, m, 6)."""
    constant = torch.tensor([0.0, -1.0, -1.0, 1.0]).expand(*b.shape, 4)
    return torch.cat([torch.stack([torch.log(b), torch.log(1 - b)], dim=-1), constant], dim=-1)


def _beta_log_prob(table: torch.Tensor, s: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """log Beta(b | s) from `beta_terms`' table, states (P, m) and `beta_features(b)`."""
    rows = table.gather(1, s.unsqueeze(-1).expand(-1, -1, table.shape[-1]))
    return (rows * features).sum(dim=-1)


def clip_per_primitive(groups: Sequence[Sequence[torch.Tensor]], max_norm: float) -> None:
    """Clip each primitive's slice of each group's stacked (P, ...) gradients to `max_norm`.

    Speed: one norm per group over its concatenated gradients, one fused in-place scaling.
    """
    grads = [[p.grad for p in params if p.grad is not None] for params in groups]
    norms = torch.stack(
        [torch.linalg.vector_norm(torch.cat([g.flatten(1) for g in gs], 1), dim=1) for gs in grads]
    )
    scales = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    pairs = [
        (g, scale.view(-1, *[1] * (g.dim() - 1)))
        for gs, scale in zip(grads, scales, strict=True)
        for g in gs
    ]
    torch._foreach_mul_([g for g, _ in pairs], [scale for _, scale in pairs])
