"""The radio and compute model (pure numpy): links, rates, device compute, and the one latency/energy model."""

from wdmoe.radio.compute import PRESETS as PRESETS
from wdmoe.radio.compute import DeviceProfile as DeviceProfile
from wdmoe.radio.compute import DeviceProfiles as DeviceProfiles
from wdmoe.radio.compute import fit_profile as fit_profile
from wdmoe.radio.compute import roofline_time_s as roofline_time_s
from wdmoe.radio.costs import ModelCosts as ModelCosts
from wdmoe.radio.latency import LatencyBreakdown as LatencyBreakdown
from wdmoe.radio.latency import LayerLoad as LayerLoad
from wdmoe.radio.latency import RequestLatency as RequestLatency
from wdmoe.radio.latency import StepLatency as StepLatency
from wdmoe.radio.latency import layer_breakdown as layer_breakdown
from wdmoe.radio.latency import request_latency as request_latency
from wdmoe.radio.latency import step_totals as step_totals
from wdmoe.radio.link import LinkState as LinkState
from wdmoe.radio.params import RadioParams as RadioParams
from wdmoe.radio.params import dbm_to_w as dbm_to_w
from wdmoe.radio.rate import PoolMode as PoolMode
from wdmoe.radio.rate import shannon_rate_bps as shannon_rate_bps
from wdmoe.radio.rate import share_time_s as share_time_s
