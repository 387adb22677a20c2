"""Running a simulation, in one place: the typed run config with its presets and layers
(`config`), the flags `market simulate` builds from it (`flags`), preparing and running a
run into its directory (`runner`), sweeps over many runs (`sweep`), the run directory's
files (`rundir`) and the proofs a third party checks against a run's head (`proofs`).

It sits between the learners and what users type: `ledger` <- `market` <- `agents` <-
`simulation` <- `analyses` / `cli.py` (tests/test_layers.py holds every import to it)."""
