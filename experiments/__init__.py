"""Experiments: each a script (`python experiments/NAME.py`) whose tables land in docs/results/."""
