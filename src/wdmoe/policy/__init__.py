"""Policies (pure numpy): one MoE layer step's `LayerState` in, a `Decision` (keep, weight, bandwidth) out."""

from wdmoe.policy.bandwidth import BandwidthAllocator as BandwidthAllocator
from wdmoe.policy.bandwidth import EqualBandwidth as EqualBandwidth
from wdmoe.policy.bandwidth import MinMaxBandwidth as MinMaxBandwidth
from wdmoe.policy.bandwidth import minmax_split as minmax_split
from wdmoe.policy.base import Decision as Decision
from wdmoe.policy.base import LayerState as LayerState
from wdmoe.policy.base import Policy as Policy
from wdmoe.policy.baselines import FastestDevices as FastestDevices
from wdmoe.policy.baselines import RandomDrop as RandomDrop
from wdmoe.policy.evaluate import layer_breakdown as layer_breakdown
from wdmoe.policy.joint import JointSelectionBandwidth as JointSelectionBandwidth
from wdmoe.policy.joint import JointSolution as JointSolution
from wdmoe.policy.topk import TopK as TopK
from wdmoe.policy.wlr import WLRThreshold as WLRThreshold
