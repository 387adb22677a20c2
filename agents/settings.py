"""The learners' settings, as Pydantic models that import no torch.

They are read by the learners (`ppo_bidder.py`, `dqn_control.py`) and by whatever builds a run
from a config file, a preset or the command line (`simulation/config.py`), which should not
wait for torch to load.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from market.recorded import Recorded


class PPOConfig(Recorded):
    """Hyper-parameters of the bidding primitives (methods.md, "Learning")."""

    added = ("gae_lambda",)

    hidden: int = Field(16, ge=1, description="width of the encoder and the value net")
    channels: int = Field(16, ge=1, description="channels of each conv layer (image tasks)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount inside the auction utility")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip")
    entropy_coef: float = Field(0.1, ge=0, description="weight of the Beta's entropy bonus")
    batch: int = Field(4096, ge=1, description="samples per primitive collected per update")
    minibatch: int = Field(256, ge=1, description="samples per gradient step")
    epochs: int = Field(1, ge=1, description="passes over each batch")
    value_l2: float = Field(1e-3, ge=0, description="L2 weight on the value net's parameters")
    max_grad_norm: float = Field(40.0, gt=0, description="per-primitive gradient-norm clip")
    policy_lr: float = Field(4e-5, gt=0, description="Adam step size of the bid policy")
    value_lr: float = Field(5e-3, gt=0, description="Adam step size of the value net")
    gae_lambda: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "the monolithic PPO's GAE lambda (unset: Monte Carlo returns); a bidder's sample "
            "is one auction, nothing to bootstrap"
        ),
    )


GYM_PPO: dict[str, Any] = {
    "hidden": 64,
    "entropy_coef": 0.01,
    "batch": 1024,
    "epochs": 4,
    "policy_lr": 3e-4,
}
"""The PPO settings a Gymnasium task starts from, each unless the run sets it: wider nets,
a smaller entropy bonus, and more and larger policy steps per sample than the tabular
tasks' (Chang et al.'s), under which a society learns CartPole (docs/gymnasium.md)."""


METHODS: dict[str, tuple[str, ...]] = {
    "independent": (),
    "ter": ("ter",),
    "ier": ("ier",),
    "iql": ("iql",),
    "full": ("ter", "ier", "iql", "psi"),
}
"""The compared methods (methods.md, "The task") and the switches each turns on."""


class ControlDQNConfig(BaseModel):
    """Hyper-parameters of the cooperative-control Q-learners (methods.md, Part 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ter: bool = Field(False, description="temporal experience replay; off: uniform minibatches")
    ier: bool = Field(False, description="imagined experience replay from the known f and g")
    iql: bool = Field(False, description="impact Q-learning: each sample's rate by its impact")
    psi: bool = Field(
        False, description="coordination coefficient: gates coordination, sigma -> alpha at +1"
    )
    gamma: float = Field(0.99, ge=0, lt=1, description="discount of every agent")
    hidden: int = Field(64, ge=1, description="width of each Q-net's two hidden layers")
    capacity: int = Field(100_000, ge=1, description="experiences kept per agent (a ring)")
    minibatch: int = Field(64, ge=1, description="t: real experiences per agent per step")
    macro_batch: int = Field(1024, ge=1, description="B: TER's macro-batch size once eps = 0")
    rho: float = Field(1.0, ge=0, description="TER's recency exponent; 0 samples uniformly [ours]")
    epsilon_start: float = Field(1.0, ge=0, le=1, description="eps_k at step 0")
    epsilon_end: float = Field(0.05, ge=0, le=1, description="exploration's floor (acting only)")
    epsilon_steps: int | None = Field(
        None, ge=1, description="env steps over which eps_k anneals to 0; None: the fraction"
    )
    epsilon_fraction: float = Field(
        0.5, gt=0, le=1, description="the schedule's share of the run's env steps (budget)"
    )
    target_period: int = Field(200, ge=1, description="gradient steps between target syncs")
    steps_per_update: int = Field(
        8, ge=1, description="env steps per gradient step (DQN's training frequency)"
    )
    alpha: float = Field(1e-3, gt=0, description="Adam step size; IQL's highest rate")
    sigma: float = Field(1e-4, gt=0, description="IQL's middle rate (shared credit, delta > 0)")
    beta: float = Field(1e-5, gt=0, description="IQL's lowest rate; coordination experiences")
    lambda_low: float = Field(0.5, ge=0, description="lambda_low in units of 1/N [ours]")
    lambda_high: float = Field(1.5, ge=0, description="lambda_high in units of 1/N [ours]")
    imagined: int = Field(
        16, ge=0, description="minibatch samples per agent imagined again (IER's ∝: t / 4)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ControlDQNConfig:
        """Rates ordered, impact band around the equal share, batch sizes nested."""
        if not 0 < self.beta < self.sigma < self.alpha:
            raise ValueError("IQL needs 0 < beta < sigma < alpha")
        if not self.lambda_low <= 1 <= self.lambda_high:
            raise ValueError("the impact band must hold the equal share: lambda_low <= 1 <= high")
        if not self.imagined <= self.minibatch <= self.macro_batch <= self.capacity:
            raise ValueError("need imagined <= minibatch <= macro_batch <= capacity")
        if self.epsilon_end > self.epsilon_start:
            raise ValueError("epsilon must not grow: epsilon_end <= epsilon_start")
        if self.psi and not (self.ier and self.iql):
            raise ValueError("psi gates IER's coordination and IQL's rate: set ier and iql too")
        return self

    @classmethod
    def for_method(cls, name: str, **overrides: Any) -> ControlDQNConfig:
        """The switches of method `name` (a key of METHODS), other fields from `overrides`,
        which may also turn a switch off (an ablation: `full` without psi, say)."""
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
        return cls(**(dict.fromkeys(METHODS[name], True) | overrides))

    def schedule_steps(self, budget: int | None) -> int:
        """Env steps over which eps_k anneals: `epsilon_steps` if set, else `epsilon_fraction`
        of the budget (the run's env steps), or of DEFAULT_BUDGET when none is known."""
        if self.epsilon_steps is not None:
            return self.epsilon_steps
        return max(1, round(self.epsilon_fraction * (budget or DEFAULT_BUDGET)))


DEFAULT_BUDGET = 200_000
"""The presets' control budget in env steps: the schedule's base for a learner outside a run."""
