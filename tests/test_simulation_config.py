"""One typed config per run: presets, TOML files, flags and --set, in that order."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.budget import BUDGET_SCALE
from cli import app
from simulation.config import PRESETS, Simulation, parse_assignment, resolve


def invoke(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `market ARGS`."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, result.stderr


def ledger_files(run: Path) -> dict[str, bytes]:
    """Every file of a run's ledger directory, by name."""
    return {p.name: p.read_bytes() for p in sorted((run / "ledger").iterdir())}


def test_layers_override_in_order(tmp_path: Path) -> None:
    """defaults < preset < file < flags < --set, each key on its own."""
    file = tmp_path / "c.toml"
    file.write_text("steps = 5000\nseed = 4\n[ppo]\nentropy_coef = 0.2\nhidden = 8\n")
    sim = resolve("chain-ccv", file, {"seed": 9, "task": None}, ["ppo.hidden=32", "steps=77"])
    assert (sim.task, sim.mechanism, sim.learn) == ("chain", "ccv", True)  # the preset
    assert sim.ppo.entropy_coef == 0.2  # the file
    assert sim.seed == 9  # a flag beats the file; an absent flag (None) changes nothing
    assert sim.ppo.hidden == 32 and sim.steps == 77  # --set beats everything
    assert resolve().task is None and resolve().mechanism == "ccv"


def test_a_set_changes_the_run_not_the_preset() -> None:
    """`--set ppo.channels=4` on one preset leaves every preset as it was: presets over
    images share one PPO section, which a run resolved before must not have changed."""
    before = json.dumps({name: preset.settings for name, preset in PRESETS.items()})
    tuned = resolve("tworooms", assignments=["ppo.channels=4"])
    assert tuned.ppo.channels == 4
    assert json.dumps({name: preset.settings for name, preset in PRESETS.items()}) == before
    assert (
        resolve("mental-rotation").ppo.channels
        == PRESETS["mental-rotation"].settings["ppo"]["channels"]
    )


def test_a_config_round_trips_through_toml(tmp_path: Path) -> None:
    """Every setting survives to_toml -> file -> resolve."""
    sim = resolve("pendulum-full", None, {"seed": 2}, ["dqn.hidden=32", "gamma=0.95"])
    file = tmp_path / "s.toml"
    file.write_text(sim.to_toml())
    assert resolve(config_file=file) == sim
    assert sim.dqn_settings("full").gamma == 0.95 and sim.dqn_settings("full").ier


def test_assignment_values_are_toml_or_text() -> None:
    """Numbers, booleans, quoted text and lists parse as TOML; bare words stay text."""
    assert parse_assignment("ppo.entropy_coef=0.05") == ("ppo.entropy_coef", 0.05)
    assert parse_assignment("learn=true") == ("learn", True)
    assert parse_assignment("task=duality") == ("task", "duality")
    assert parse_assignment('task="bandit"') == ("task", "bandit")


def test_preset_with_set_and_seed_runs_and_records_both_configs(tmp_path: Path) -> None:
    """The issue's line, with a small budget: the override reaches the learners' config."""
    run = tmp_path / "run"
    code, out, _ = invoke("simulate", "--preset", "chain-ccv", "--set", "ppo.entropy_coef=0.05",
                          "--seed", "3", "--steps", "3000", "--out", str(run))  # fmt: skip
    assert code == 0, out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["seed"] == 3 and recorded["task"] == "chain"
    assert recorded["mechanism"] == "ccv" and recorded["learner"]["entropy_coef"] == 0.05
    assert "entropy_coef = 0.05" in (run / "simulation.toml").read_text()
    again = tmp_path / "again"
    code, out, _ = invoke("simulate", "--config", str(run / "simulation.toml"), "--out", str(again))
    assert code == 0, out
    assert ledger_files(again) == ledger_files(run)  # same settings, same seed: same bytes


def test_a_control_preset_takes_dqn_settings(tmp_path: Path) -> None:
    """Control presets pick the method's switches; --set reaches the DQN settings."""
    run = tmp_path / "ctl"
    code, out, _ = invoke("simulate", "--preset", "integrator-full", "--steps", "300",
                          "--concurrency", "3", "--set", "dqn.minibatch=32",
                          "--set", "dqn.imagined=16", "--out", str(run))  # fmt: skip
    assert code == 0, out
    learner = json.loads((run / "config.json").read_text())["learner"]
    assert learner["minibatch"] == 32 and learner["imagined"] == 16
    assert learner["ter"] and learner["ier"] and learner["iql"] and learner["psi"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "ppo.entropy=0.1"], "unknown setting 'ppo.entropy'"),
        (["--set", "ppo.entropy_coef=-1"], "ppo.entropy_coef"),
        (["--set", "stepz=10"], "unknown setting 'stepz'"),
        (["--set", "noequals"], "expected KEY=VALUE"),
        (["--set", "ppo.gamma=0.5"], "set gamma"),
        (["--set", "dqn.ier=true"], "set method"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--config", "missing.toml"], "no such config file"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    """A bad key or value: one line naming it, a non-zero exit, no run directory."""
    run = tmp_path / "run"
    code, _, err = invoke("simulate", *args, "--out", str(run))
    assert code != 0
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_a_config_file_that_is_not_toml_is_a_one_line_error(tmp_path: Path) -> None:
    """Unparseable TOML is named in one line."""
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    code, _, err = invoke("simulate", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert code != 0 and "not a TOML config" in err and len(err.strip().splitlines()) == 1


def test_presets_lists_every_preset_and_each_validates() -> None:
    """`market presets` names them all, and each resolves to a valid Simulation."""
    code, out, _ = invoke("presets")
    assert code == 0
    for name in PRESETS:
        assert name in out
        assert isinstance(resolve(name), Simulation)


# the cut budget: MARKET_BUDGET_SCALE -----------------------------------------------------


@pytest.fixture
def cut(monkeypatch: pytest.MonkeyPatch) -> float:
    """Every budget cut a thousand times, as tests/test_readme.py runs the README."""
    monkeypatch.setenv(BUDGET_SCALE, "0.001")
    return 0.001


def test_the_budget_scale_cuts_steps_and_episodes_to_at_least_one(cut: float) -> None:
    """Steps and episodes are multiplied by the factor, rounded, never below 1."""
    assert resolve("chain-ccv").steps == 1000
    assert resolve(flags={"episodes": 10_000_000}).episodes == 10_000
    assert resolve(flags={"episodes": 20}).episodes == 1
    sim = resolve("integrator-full", None, {"seed": 1}, ["steps=300000"])
    assert sim.steps == 300 and sim.budget_scale == cut


def test_a_run_under_the_budget_scale_records_it(tmp_path: Path, cut: float) -> None:
    """A cut run's simulation.toml says so, beside the cut budget: the cut is never silent."""
    run = tmp_path / "run"
    code, out, _ = invoke("simulate", "--episodes", "3000", "--out", str(run))
    assert code == 0, out
    recorded = tomllib.loads((run / "simulation.toml").read_text())
    assert recorded["budget_scale"] == cut and recorded["episodes"] == 3
    assert json.loads((run / "summary.json").read_text())["episodes"] == 3


def test_no_budget_scale_no_record_and_defaults_are_not_cut(cut: float) -> None:
    """Without a budget to cut (the defaults) nothing is recorded; unset, nothing changes."""
    assert resolve().budget_scale is None and resolve().episodes is None
    assert "budget_scale" not in resolve().to_toml()


def test_the_budget_scale_is_applied_once(tmp_path: Path, cut: float) -> None:
    """A cut config passed back runs as it was cut; a budget given with it is cut."""
    first = resolve("chain-ccv")
    file = tmp_path / "s.toml"
    file.write_text(first.to_toml())
    assert resolve(config_file=file) == first
    assert resolve(config_file=file, flags={"steps": 50_000}).steps == 50


def test_unset_the_budget_scale_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MARKET_BUDGET_SCALE unset or empty, budgets are as given and nothing is recorded."""
    monkeypatch.setenv(BUDGET_SCALE, "")
    sim = resolve("chain-ccv")
    assert sim.steps == 1_000_000 and sim.budget_scale is None


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan", "inf"])
def test_a_bad_budget_scale_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """MARKET_BUDGET_SCALE must be a positive number: one line naming it, no run."""
    monkeypatch.setenv(BUDGET_SCALE, value)
    code, _, err = invoke("simulate", "--out", str(tmp_path / "r"))
    assert code != 0 and BUDGET_SCALE in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_the_budget_scale_cannot_be_set(cut: float) -> None:
    """`budget_scale` records the environment's factor; --set cannot claim one."""
    with pytest.raises(ValueError, match=BUDGET_SCALE):
        resolve(assignments=["budget_scale=0.5"])


def test_options_trained_under_the_budget_scale_are_never_used_at_full_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut Two Rooms options are trained with cut steps and say so; a cut run takes any
    cached options, a run at full budget trains cut ones again."""
    import torch

    import agents.option_ppo as option_ppo

    monkeypatch.setenv("MARKET_CACHE", str(tmp_path / "cache"))
    asked: list[int] = []

    def fake(cfg: option_ppo.OptionPPOSettings, progress: object = None) -> dict[str, object]:
        asked.append(cfg.door_steps)
        return {"settings": cfg.model_dump()}

    monkeypatch.setattr(option_ppo, "train_options", fake)
    monkeypatch.setenv(BUDGET_SCALE, "0.001")
    path = option_ppo.ensure_options()
    assert torch.load(path, weights_only=True)["budget_scale"] == 0.001
    option_ppo.ensure_options()  # cut, and cached: not trained again
    assert asked == [200]
    monkeypatch.delenv(BUDGET_SCALE)
    option_ppo.ensure_options()  # full budget: the cut options are replaced
    option_ppo.ensure_options()
    assert asked == [200, 200_000]
    assert torch.load(path, weights_only=True)["budget_scale"] is None
