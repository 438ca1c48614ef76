"""CoEL deployment planner (papers.md §4): perception, intra/inter-server deployment, and updating, in pure numpy.

perception (`status`, `requirement`) -> cluster file (`cluster`) -> deployment (`planner`: `intra` or `inter`,
scored by `cost`, the expected per-token latency of wdmoe.radio.latency) -> `Plan` (`deployment`, `planfile`)
-> updating (`replan`). Only `calibrate` needs torch, and nothing here imports it.
"""
