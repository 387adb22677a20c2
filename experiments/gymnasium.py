"""Societies on Gymnasium envs against the monolithic PPO and CleanRL's figures: env steps
and wall seconds to solve, final return, audits (experiments/gym_envs.py says how).

    python experiments/gymnasium.py --seeds 5 [--envs CartPole-v1,Acrobot-v1]
                                    [--arms ccv,bb,monolithic] [--steps 1000000] [--workers 2]
                                    [--reward-scale X] [--reward-offset Y] [--keep DIR]
                                    [--ppo KEY=VALUE,...] [--first-seed 0]
The reward map (`--reward-scale`, `--reward-offset`: docs/gymnasium.md) and the PPO settings
(`--ppo`, over the env's GYM_PPO) are every run's; unset, the defaults. Seeds run from
`--first-seed` (a study that chooses settings on seeds of its own).
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
from pathlib import Path

import polars as pl
from generated import RESULTS, publish, save_data
from gym_envs import ARMS, THRESHOLDS, run_one
from pool import run_all
from pydantic import ValidationError

from simulation.config import Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per run")
    parser.add_argument("--envs", default="CartPole-v1", help="comma-separated Gymnasium ids")
    parser.add_argument("--arms", default=",".join(ARMS), help="a comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/gymnasium"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="gymnasium", help="the saved data's directory name")
    parser.add_argument("--reward-scale", type=float, help="every run's (default: the env's)")
    parser.add_argument("--reward-offset", type=float, help="every run's (default: the env's)")
    parser.add_argument(
        "--keep", type=Path, help="keep each finished run here; run again to finish the rest"
    )
    parser.add_argument(
        "--ppo", default="", help="PPO settings over the env's, e.g. policy_lr=0.001,epochs=8"
    )
    args = parser.parse_args()
    envs, arms = args.envs.split(","), args.arms.split(",")
    if unknown := [e for e in envs if e not in THRESHOLDS]:
        parser.error(f"no solved threshold for {unknown}; choose from {', '.join(THRESHOLDS)}")
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rewards = {"reward_scale": args.reward_scale, "reward_offset": args.reward_offset}
    settings: dict[str, object] = {k: v for k, v in rewards.items() if v is not None}
    if args.ppo:
        try:
            settings["ppo"] = {
                k: float(v) for k, v in (kv.split("=") for kv in args.ppo.split(","))
            }
        except ValueError:
            parser.error(f"--ppo {args.ppo!r}: expected KEY=NUMBER,..., e.g. policy_lr=0.001")
    try:  # every run's settings, checked before any run starts
        Simulation.model_validate({"task": f"gym:{envs[0]}", "learn": True, **settings})
    except ValidationError as e:
        parser.error(f"--ppo {args.ppo!r}: {e.errors()[0]['msg']} ({e.errors()[0]['loc']})")
    jobs = [(e, a, s, args.steps, args.out, settings)
            for e in envs for a in arms
            for s in range(args.first_seed, args.first_seed + args.seeds)]  # fmt: skip
    rows, points = run_all(run_one, jobs, args.workers, args.keep)
    order = [pl.col("env"), pl.col("arm").replace_strict(list(ARMS), list(range(len(ARMS)))),
             pl.col("seed")]  # fmt: skip
    frames = {"runs": pl.DataFrame(rows).sort(order), "curves": pl.DataFrame(points)}
    publish(save_data(args.results, args.name, "gymnasium", frames), args.results)


if __name__ == "__main__":
    main()
