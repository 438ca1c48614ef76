"""The latency–accuracy experiments of `wdmoe experiment NAME`: each writes one CSV and one PNG.

Contract: an experiment is a function `(Setup, Progress) -> ExperimentResult` (`wdmoe.experiments.run`). Latency
comes from the trace-replay simulator (`wdmoe.sim`, pure numpy) over channel realizations of one scenario;
accuracy from `wdmoe.eval` on the model under each policy (torch, imported only when accuracy is evaluated).
Recorded traces and accuracy results are cached under `Setup.out_dir / "cache"`, so re-drawing a figure is cheap.
"""
