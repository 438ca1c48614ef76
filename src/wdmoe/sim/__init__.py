"""Trace-driven simulation (pure numpy): router traces, their replay through the runtime's radio and policy code.

    trace = Trace.load("run.npz")                      # or record_trace(model.steps, ...) / synthesize_trace(rng, ...)
    summaries = simulate_grid(trace, {"default": Scenario.default(trace.num_devices)}, ["topk", "wlr", "joint"])
    cells = simulate_cells(trace, {"default": Scenario.default(trace.num_devices)}, ["wlr"], Poisson(0.5),
                           users=16, per_user=4)                # a cell: 16 users, 4 requests each
"""

from wdmoe.sim.cell import Closed as Closed
from wdmoe.sim.cell import Poisson as Poisson
from wdmoe.sim.cell import run_cell as run_cell
from wdmoe.sim.grid import simulate_cells as simulate_cells
from wdmoe.sim.grid import simulate_grid as simulate_grid
from wdmoe.sim.simulate import Replay as Replay
from wdmoe.sim.simulate import replay as replay
from wdmoe.sim.synthesize import synthesize_trace as synthesize_trace
from wdmoe.sim.trace import Trace as Trace
from wdmoe.sim.trace import TraceError as TraceError
from wdmoe.sim.trace import record_trace as record_trace
