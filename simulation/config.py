"""One typed config for everything `market simulate` runs, with presets, files and overrides.

A `Simulation` is built in layers, each overriding the one before: its defaults, a preset
(`--preset NAME`, `PRESETS`), a TOML file (`--config FILE`), the command line's own flags,
then `--set a.b=value` assignments. Every layer is validated as a whole at the end; a bad key
or value is a one-line `ValueError` that names it. The resolved config is written to a run's
directory as `simulation.toml`; `--config RUN/simulation.toml` runs the same thing again
(same seed, same ledger).

The learners' discount is the run's `gamma` (the auction utility's and the control agents'),
so `ppo.gamma` and `dqn.gamma` are not set directly; a control run's `method` sets the DQN
switches (`dqn.ter`, `dqn.ier`, `dqn.iql`, `dqn.psi`), which are not set directly either.

`MARKET_BUDGET_SCALE` (say 0.001) cuts every budget: the resolved `steps` and `episodes` are
multiplied by it (at least 1 each) and the factor is recorded as `budget_scale`, so a cut
run's simulation.toml says so. It is how the README's commands are run as a test
(tests/test_readme.py); the Two Rooms options a first run trains are cut by the same factor
(`agents/option_ppo.py`). `agents.budget.budget_scale()` is the one place it is read.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.budget import BUDGET_SCALE, budget_scale, scaled
from agents.settings import GYM_PPO, ControlDQNConfig, PPOConfig
from market.economy import EconomyConfig
from market.tasks import gym_id
from simulation.rundir import SIMULATION

DERIVED = {
    "ppo.gamma": "set gamma (the run's discount) instead",
    "dqn.gamma": "set gamma (the run's discount) instead",
    **{f"dqn.{s}": "set method instead" for s in ("ter", "ier", "iql", "psi")},
}
"""Settings that follow from others, with what to set instead."""
BUDGETS = ("steps", "episodes")


class Simulation(BaseModel):
    """What `market simulate` runs. None means the flag's documented default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Literal["auction", "control"] = "auction"
    task: str | None = Field(None, description="chain for auctions, pendulum for control")
    mechanism: str = "ccv"
    bidder: str | None = None
    learn: bool = False
    monolithic: bool = False
    solitary: bool = False
    episodes: int | None = None
    steps: int | None = None
    seed: int = Field(0, ge=0)
    gamma: float = Field(0.99, gt=0, lt=1)
    constant: float = 0.5
    concurrency: int | None = None
    kernel: str = "auto"
    init: str | None = Field(
        None, description="a learning run whose latest snapshot starts the learners (transfer)"
    )
    primitives: int | None = Field(
        None, ge=2, description="Chain's primitives: L, R and useless ones (stay, reset, ...)"
    )
    reward_scale: float | None = Field(
        None, gt=0, description="a Gymnasium task's credit per unit of its env's reward"
    )
    reward_offset: float | None = Field(
        None, description="added to a Gymnasium task's every step's reward before scaling"
    )
    economy: Literal["hayek"] | None = Field(
        None, description="hayek: members endowed, bids capped by wealth, rent, bankruptcy"
    )
    hayek: EconomyConfig = EconomyConfig()
    frozen: bool = Field(
        False, description="the learners bid but never update (evaluate an --init snapshot)"
    )
    agents: int = 2
    controls: int | None = Field(
        None, description="each agent's controls over its share of a Gymnasium plant's action"
    )
    method: str | None = None
    ppo: PPOConfig = PPOConfig()
    dqn: ControlDQNConfig = ControlDQNConfig()
    tensorboard: str | None = Field(
        None, description="a directory for TensorBoard scalars (DIR/RUN; not in the ledger)"
    )
    budget_scale: float | None = Field(
        None, gt=0, description=f"the {BUDGET_SCALE} that cut steps and episodes (recorded)"
    )

    @model_validator(mode="before")
    @classmethod
    def _gym_defaults(cls, data: Any) -> Any:
        """A Gymnasium task's PPO settings start from `GYM_PPO` (each one the run does not
        set), resolved here so that simulation.toml records them."""
        if not isinstance(data, dict) or gym_id(str(data.get("task") or "")) is None:
            return data
        ppo = data.get("ppo") or {}
        if isinstance(ppo, PPOConfig):
            ppo = ppo.model_dump(exclude_unset=True)
        return {**data, "ppo": {**GYM_PPO, **ppo}}

    def ppo_settings(self) -> PPOConfig:
        """The PPO primitives' settings, with the run's discount."""
        return self.ppo.model_copy(update={"gamma": self.gamma})

    def dqn_settings(self, method: str) -> ControlDQNConfig:
        """The control agents' settings for `method`, with the run's discount."""
        own = self.dqn.model_dump(exclude={"gamma", "ter", "ier", "iql", "psi"})
        return ControlDQNConfig.for_method(method, gamma=self.gamma, **own)

    def to_toml(self) -> str:
        """This config as TOML (unset options, None, and derived settings are left out)."""
        data = _without_none(self.model_dump(mode="json"))
        for path in DERIVED:
            section, name = path.split(".")
            data[section].pop(name, None)
        return tomli_w.dumps(data)


@dataclass(frozen=True)
class Preset:
    """A named starting point: one of the papers' experiments."""

    description: str
    settings: dict[str, Any]


_LEARN = {"learn": True}
_FAST = {"policy_lr": 1e-3, "batch": 1024, "epochs": 4}
"""PPO with a larger step size and four passes over smaller batches than methods.md's."""
_IMAGES = {"channels": 8, **_FAST}
"""PPO on tasks over images: CNN bidders learn far faster with `_FAST` (docs/results.md,
Mental Rotation)."""
_CHAIN12 = {
    "task": "chain",
    "mechanism": "ccv",
    **_LEARN,
    "primitives": 12,
    "concurrency": 8,
    "steps": 200_000,
    "ppo": _FAST,
}
"""Chain with 10 useless primitives, as docs/results.md's economy experiment runs it."""
PRESETS: dict[str, Preset] = {
    "chain": Preset("Chain, a learning cloned society (CCV unless told)", {
        "task": "chain", **_LEARN, "steps": 1_000_000}),
    "chain-ccv": Preset("Chain, cloned CCV, 1M env steps (solved in about 800k)", {
        "task": "chain", "mechanism": "ccv", **_LEARN, "steps": 1_000_000}),
    "chain-bb": Preset("Chain, cloned bucket brigade, 1M env steps", {
        "task": "chain", "mechanism": "bb", **_LEARN, "steps": 1_000_000}),
    "chain-v": Preset("Chain, cloned Vickrey, 1M env steps", {
        "task": "chain", "mechanism": "v", **_LEARN, "steps": 1_000_000}),
    "duality-ccv": Preset("Duality, cloned CCV, 1.5M env steps", {
        "task": "duality", "mechanism": "ccv", **_LEARN, "steps": 1_500_000}),
    "bandit": Preset("Bandit, a learning cloned society (Vickrey unless told)", {
        "task": "bandit", "mechanism": "v", **_LEARN, "steps": 600_000}),
    "bandit-v": Preset("Bandit, cloned Vickrey, 600k env steps", {
        "task": "bandit", "mechanism": "v", **_LEARN, "steps": 600_000}),
    "bandit-v-solitary": Preset("Bandit, solitary Vickrey, 600k env steps", {
        "task": "bandit", "mechanism": "v", **_LEARN, "solitary": True, "steps": 600_000}),
    "bandit-fp": Preset("Bandit, cloned first price, 600k env steps", {
        "task": "bandit", "mechanism": "fp", **_LEARN, "steps": 600_000}),
    "bandit-env": Preset("Bandit, cloned, environment reward only, 600k env steps", {
        "task": "bandit", "mechanism": "env", **_LEARN, "steps": 600_000}),
    "mental-rotation": Preset("Mental Rotation: a cloned CCV society of six affine functions", {
        "task": "mental-rotation", "mechanism": "ccv", **_LEARN, "steps": 60_000,
        "ppo": _IMAGES}),
    "tworooms": Preset("Two Rooms: a cloned CCV society of three frozen options, reach green", {
        "task": "tworooms", "mechanism": "ccv", **_LEARN, "steps": 60_000, "ppo": _IMAGES}),
    "tworooms-monolithic": Preset("Two Rooms: the hierarchical PPO over the options, green", {
        "task": "tworooms", "monolithic": True, "steps": 60_000, "ppo": _IMAGES}),
    "hayek": Preset("Chain with 10 useless primitives, a Hayek economy that prunes them", {
        **_CHAIN12, "economy": "hayek", "hayek": {"endowment": 50.0, "rent": 0.0001}}),
    "hayek-fixed": Preset("Chain with 10 useless primitives, the fixed cloned society", _CHAIN12),
    "chain-monolithic": Preset("Chain, the monolithic categorical PPO baseline", {
        "task": "chain", "monolithic": True, "steps": 1_000_000}),
    "pendulum-full": Preset("Control: 2 agents swing up and hold the pendulum, TER+IER+IQL", {
        "variant": "control", "task": "pendulum", "agents": 2, "method": "full",
        "steps": 200_000}),
    "pendulum-independent": Preset("Control: 2 independent DQN agents on the pendulum", {
        "variant": "control", "task": "pendulum", "agents": 2, "method": "independent",
        "steps": 200_000}),
    "pendulum-n4-full": Preset("Control: 4 agents on the pendulum, TER+IER+IQL", {
        "variant": "control", "task": "pendulum", "agents": 4, "method": "full",
        "steps": 200_000}),
    "integrator-full": Preset("Control sanity task: 2 agents on the double integrator", {
        "variant": "control", "task": "integrator", "agents": 2, "method": "full",
        "steps": 50_000}),
}  # fmt: skip
"""The papers' experiments, by name (`market presets` lists them)."""


def resolve(
    preset: str | None = None,
    config_file: Path | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> Simulation:
    """The Simulation of the layers: defaults < preset < the learner settings of an `init`
    run < file < flags < `a.b=value`s (the file may be given as its parsed contents)."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; `market presets` lists them")
        _merge(data, PRESETS[preset].settings)
    init = (flags or {}).get("init")
    if init is not None and (Path(init) / SIMULATION).is_file():
        learned = read_toml(Path(init) / SIMULATION)  # the snapshot's nets' shapes
        _merge(data, {k: learned[k] for k in ("ppo",) if k in learned})
    if isinstance(config_file, dict):
        _merge(data, config_file)
    elif config_file is not None:
        _merge(data, read_toml(config_file))
    recorded_cut = "budget_scale" in data  # a cut run's config: its budget is cut already
    given = {k for k, v in (flags or {}).items() if v is not None}
    _merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    for assignment in assignments or []:
        key, value = parse_assignment(assignment)
        if key == "budget_scale":
            raise ValueError(f"budget_scale cannot be set: set {BUDGET_SCALE} instead")
        given.add(key)
        _set(data, key, value)
    _cut(data, given if recorded_cut else set(BUDGETS))
    return validated(data)


def _cut(data: dict[str, Any], keys: set[str]) -> None:
    """Cut the budgets among `keys` by `MARKET_BUDGET_SCALE` and record the factor."""
    scale = budget_scale()
    cut = [k for k in BUDGETS if k in keys and type(data.get(k)) is int and data[k] > 0]
    if scale is None or not cut:  # no factor, or only the defaults (small already)
        return
    for key in cut:
        data[key] = scaled(data[key], scale)
    data["budget_scale"] = scale


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's contents; a one-line error if it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a TOML config ({e})") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """`a.b=value` as ("a.b", value): a TOML value (number, true/false, "text", [list]), or
    the bare text as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. ppo.entropy_coef=0.05")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def validated(data: dict[str, Any]) -> Simulation:
    """`data` as a Simulation; the first problem as a one-line error naming its key."""
    for path in _paths(data):
        if path in DERIVED:
            raise ValueError(f"{path} cannot be set: {DERIVED[path]}")
    try:
        return Simulation.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            section = _section(first["loc"][:-1])
            known = ", ".join(section.model_fields)
            raise ValueError(f"unknown setting {where!r}; known here: {known}") from None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message} (got {json.dumps(first['input'])})") from None


def _section(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model that the settings at `loc` belong to."""
    model: type[BaseModel] = Simulation
    for name in loc:
        annotation = model.model_fields[str(name)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """`update` into `into`, section by section. A section is copied, never shared: a later
    `--set` into it must not change the preset (or file) it came from."""
    for key, value in update.items():
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *sections, name = key.split(".")
    node = data
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {section!r} is a setting, not a section")
        node = child
    node[name] = value


def _paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        out += _paths(value, f"{path}.") if isinstance(value, dict) else [path]
    return out


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None
    }
