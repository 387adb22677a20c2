"""Trains the three Two Rooms options with a monolithic PPO (CleanRL style), then freezes them.

Each option is its own small problem on the MiniGrid env of `market.two_rooms`: episodes start
uniformly in the option's start set (`option_starts`: anywhere in room 1 for the door option,
anywhere in room 2 or the doorway for the goal options) and end when the option's own
termination predicate holds (reward 1: success), when the episode ends otherwise (the wrong
goal: 0), or at the option's step cap (0). The discount makes shorter routes worth more.
`envs` episodes are stepped together through one MiniGrid env restored to each one's state.

After training, every option is run greedily from every state of its start set through the
task's own option runner, and the checkpoint stores the weights with each success rate.

    python -m agents.option_ppo --seed 0      # writes options_path(0) unless it exists
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.distributions import Categorical

from agents.budget import budget_scale, scaled
from market.two_rooms import (
    HEIGHT,
    OPTION_NAMES,
    OPTION_STEPS,
    VERSION,
    WIDTH,
    FrozenOptions,
    OptionNet,
    TwoRooms,
    TwoRoomsEnv,
    encode,
    env_steps,
    load_checkpoint,
    one_torch_thread,
    option_ends,
    option_starts,
    options_path,
)

RELIABLE = 0.95
"""The greedy success rate below which `main` warns that an option is unreliable."""

ProgressFn = Callable[[str, int, int], None]
"""Told (option name, env steps done, env steps in all) as training goes."""


class OptionPPOSettings(BaseModel):
    """Hyper-parameters of the option trainer (one set for all three options)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="seeds torch and the start draws of every option")
    door_steps: int = Field(200_000, ge=1, description="env steps of training of the door option")
    goal_steps: int = Field(150_000, ge=1, description="env steps of training of each goal option")
    envs: int = Field(16, ge=1, description="episodes stepped at once")
    rollout: int = Field(64, ge=1, description="env steps per episode slot per update")
    lr: float = Field(1e-3, gt=0, description="Adam step size, annealed linearly to 0")
    gamma: float = Field(0.95, gt=0, le=1, description="discount: shorter routes pay more")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE's lambda")
    epochs: int = Field(4, ge=1, description="passes over each rollout")
    minibatch: int = Field(256, ge=1, description="samples per gradient step")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip")
    norm_adv: bool = Field(
        False, description="normalise advantages per minibatch (amplifies noise before a success)"
    )
    entropy_coef: float = Field(0.01, ge=0, description="weight of the entropy bonus")
    value_coef: float = Field(0.5, ge=0, description="weight of the value loss")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient-norm clip")


def make_env() -> TwoRoomsEnv:
    """The MiniGrid env every option trains in (its own goal reward is not used)."""
    return TwoRoomsEnv("green")


class OptionEpisodes:
    """`n` training episodes of one option, stepped in a loop through one MiniGrid env that is
    restored to each episode's state id; a finished episode restarts at once."""

    def __init__(self, option: int, n: int, rng: np.random.Generator) -> None:
        self.option, self.rng, self.env = option, rng, make_env()
        self.starts = option_starts(option)
        self.state = rng.choice(self.starts, size=n)
        self.k = np.zeros(n, dtype=np.int64)

    def observe(self) -> NDArray[np.uint8]:
        """The full-grid encodings the option reads, (n, 3, H, W)."""
        return encode(self.state)

    def step(self, actions: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Step every episode; the option's rewards and which episodes ended."""
        self.state, _, ended = env_steps(self.env, self.state, actions)
        self.k += 1
        success = option_ends(self.option, self.state)
        done = success | ended | (self.k >= OPTION_STEPS)
        self.state[done] = self.rng.choice(self.starts, size=int(done.sum()))
        self.k[done] = 0
        return success.astype(np.float32), done


class Trained(NamedTuple):
    """One option's training: the network, the env steps taken, and per update the share of
    finished training episodes that succeeded (sampling, not greedy)."""

    net: OptionNet
    env_steps: int
    success_curve: list[float]


def train_option(
    option: int, cfg: OptionPPOSettings, progress: ProgressFn | None = None
) -> Trained:
    """PPO on option `option`'s episodes, on one torch thread (small batches)."""
    with one_torch_thread():
        return _train(option, cfg, progress)


def _train(option: int, cfg: OptionPPOSettings, progress: ProgressFn | None) -> Trained:
    torch_seed, numpy_seed = np.random.SeedSequence([cfg.seed, option]).generate_state(2)
    torch.manual_seed(int(torch_seed))
    episodes = OptionEpisodes(option, cfg.envs, np.random.default_rng(int(numpy_seed)))
    net = OptionNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    t_len, n = cfg.rollout, cfg.envs
    obs = torch.zeros((t_len, n, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    actions = torch.zeros((t_len, n), dtype=torch.long)
    logps, rewards, dones, values = (torch.zeros((t_len, n)) for _ in range(4))
    next_obs, next_done = torch.from_numpy(episodes.observe()), torch.zeros(n)
    steps = cfg.door_steps if OPTION_NAMES[option] == "door" else cfg.goal_steps
    updates = max(1, -(-steps // (t_len * n)))
    curve = []
    for update in range(updates):
        optimizer.param_groups[0]["lr"] = cfg.lr * (1 - update / updates)
        ended = won = 0
        for t in range(t_len):  # collect a rollout with the sampling policy
            obs[t], dones[t] = next_obs, next_done
            with torch.no_grad():
                hidden = net.features(next_obs)
                dist = Categorical(logits=net.policy(hidden))
                action = dist.sample()
                values[t] = net.value(hidden)[:, 0]
            actions[t], logps[t] = action, dist.log_prob(action)
            reward, done = episodes.step(action.numpy())
            ended, won = ended + int(done.sum()), won + int(reward.sum())
            rewards[t], next_done = torch.from_numpy(reward), torch.from_numpy(done).float()
            next_obs = torch.from_numpy(episodes.observe())
        with torch.no_grad():
            next_value = net.value(net.features(next_obs))[:, 0]
        advantages = gae(rewards, values, dones, next_value, next_done, cfg)
        batch = (obs.flatten(0, 1), actions.flatten(), logps.flatten(), advantages.flatten())
        ppo_update(net, optimizer, *batch, (advantages + values).flatten(), cfg)
        curve.append(won / max(ended, 1))
        if progress is not None:
            progress(OPTION_NAMES[option], (update + 1) * t_len * n, updates * t_len * n)
    return Trained(net, updates * t_len * n, curve)


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    cfg: OptionPPOSettings,
) -> torch.Tensor:
    """Generalised advantage estimates (T, n); `dones[t]` marks obs t as an episode's first."""
    t_len = len(rewards)
    advantages, last = torch.zeros_like(rewards), torch.zeros_like(next_value)
    for t in reversed(range(t_len)):
        later_done = next_done if t == t_len - 1 else dones[t + 1]
        later_value = next_value if t == t_len - 1 else values[t + 1]
        alive = 1.0 - later_done
        delta = rewards[t] + cfg.gamma * later_value * alive - values[t]
        last = delta + cfg.gamma * cfg.gae_lambda * alive * last
        advantages[t] = last
    return advantages


def ppo_update(
    net: OptionNet,
    optimizer: torch.optim.Optimizer,
    obs: torch.Tensor,
    actions: torch.Tensor,
    logps: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: OptionPPOSettings,
) -> None:
    """`epochs` passes of clipped-surrogate minibatch steps over one rollout (flattened)."""
    for _ in range(cfg.epochs):
        order = torch.randperm(len(obs))
        for start in range(0, len(obs), cfg.minibatch):
            i = order[start : start + cfg.minibatch]
            hidden = net.features(obs[i])
            dist = Categorical(logits=net.policy(hidden))
            ratio = torch.exp(dist.log_prob(actions[i]) - logps[i])
            adv = advantages[i]
            if cfg.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
            policy_loss = -torch.min(ratio * adv, clipped * adv).mean()
            value_loss = ((net.value(hidden)[:, 0] - returns[i]) ** 2).mean()
            loss = policy_loss - cfg.entropy_coef * dist.entropy().mean()
            loss = loss + cfg.value_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()


def evaluate(nets: list[OptionNet]) -> dict[str, dict[str, float]]:
    """Each option run greedily from every state of its start set by the task's own option
    runner: its success rate and mean env steps."""
    task = TwoRooms("green", options=FrozenOptions(nets))
    out = {}
    for option, name in enumerate(OPTION_NAMES):
        starts = option_starts(option)
        moved = task.transition(starts, np.full(len(starts), option))
        success = option_ends(option, moved.next_state)
        out[name] = {"success": float(success.mean()), "mean_steps": float(moved.duration.mean())}
    return out


def train_options(cfg: OptionPPOSettings, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train all three options; the checkpoint (weights, settings, measured figures)."""
    nets, figures = [], {}
    for option, name in enumerate(OPTION_NAMES):
        began, began_cpu = time.perf_counter(), time.process_time()
        net, steps, curve = train_option(option, cfg, progress)
        seconds, cpu = time.perf_counter() - began, time.process_time() - began_cpu
        nets.append(net)
        figures[name] = {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "env_steps": steps,
            "steps_per_second": steps / seconds,
            "steps_per_cpu_second": steps / cpu,
            "final_training_success": curve[-1],
        }
    for name, measured in evaluate(nets).items():
        figures[name].update(measured)
    return {
        "version": VERSION,
        "seed": cfg.seed,
        "settings": cfg.model_dump(),
        "options": {name: net.state_dict() for name, net in zip(OPTION_NAMES, nets, strict=True)},
        "figures": figures,
    }


def ensure_options(
    seed: int = 0,
    progress: ProgressFn | None = None,
    settings: OptionPPOSettings | None = None,
) -> Path:
    """The path of the options trained from `seed`, training and saving them first if the
    cache has none (`settings` overrides the defaults; its seed is replaced by `seed`).

    Under `MARKET_BUDGET_SCALE` their env steps are cut by its factor and the checkpoint
    records it; a run at full budget retrains options it finds cut."""
    path = options_path(seed)
    scale = budget_scale()
    if path.exists() and (scale is not None or not _cut(path)):
        return path  # a cut run takes any options; a full one never takes cut ones
    cfg = (settings or OptionPPOSettings()).model_copy(update={"seed": seed})
    if scale is not None:
        steps = {k: scaled(getattr(cfg, k), scale) for k in ("door_steps", "goal_steps")}
        cfg = cfg.model_copy(update=steps)
    checkpoint = {**train_options(cfg, progress), "budget_scale": scale}
    partial = path.with_suffix(f".{time.time_ns()}.partial")
    torch.save(checkpoint, partial)
    partial.replace(path)  # atomic: a reader never sees half a file
    return path


def _cut(path: Path) -> bool:
    """Whether the options at `path` were trained under `MARKET_BUDGET_SCALE`."""
    return torch.load(path, weights_only=True).get("budget_scale") is not None


@contextmanager
def rich_progress() -> Iterator[ProgressFn]:
    """A Rich progress bar per option, as a `ProgressFn`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn()) as bar:
        tasks: dict[str, Any] = {}

        def show(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"option {name}", total=total)
            bar.update(tasks[name], completed=done)

        yield show


def main(argv: list[str] | None = None) -> None:
    """Train the options of `--seed` into the cache unless they are there; print figures."""
    parser = argparse.ArgumentParser(description="Train the frozen Two Rooms options.")
    parser.add_argument("--seed", type=int, default=0)
    seed = parser.parse_args(argv).seed
    with rich_progress() as progress:
        path = ensure_options(seed, progress)
    for name, f in load_checkpoint(seed)["figures"].items():
        print(
            f"{name:5s}  greedy success {f['success']:.3f}  mean steps {f['mean_steps']:.2f}  "
            f"{f['env_steps']} env steps in {f['seconds']:.0f} s wall, {f['cpu_seconds']:.0f} s "
            f"CPU ({f['steps_per_cpu_second']:.0f} steps per CPU second)"
        )
        if f["success"] < RELIABLE:
            print(f"warning: option {name} succeeds from only {f['success']:.1%} of its starts")
    print(path)


if __name__ == "__main__":
    main()
