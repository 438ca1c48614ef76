"""`DistributedMoE`: a Hugging Face MoE model whose routed experts run on devices, with the transformers API.

    model = DistributedMoE.from_pretrained("path/to/mixtral", num_devices=8)   # in-process devices, TopK
    model = DistributedMoE.from_pretrained(path, torch_device="cuda", dtype=torch.bfloat16)   # all on one GPU
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False)
    logits = model(input_ids).logits
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wdmoe.backends.base import DevicePool
from wdmoe.backends.local import LocalDevicePool
from wdmoe.errors import ShardError
from wdmoe.model.moe_shape import MoeShape, moe_shape_of_config
from wdmoe.model.shards import MANIFEST, Manifest
from wdmoe.model.stream_split import split_dir_for
from wdmoe.placement import Placement
from wdmoe.radio.costs import ModelCosts
from wdmoe.runtime.batch import KVArena, SequenceCache, forward_segments
from wdmoe.runtime.device_moe import DeviceMoE
from wdmoe.runtime.graphed_decode import GraphedDecoder, cache_length, plain_greedy
from wdmoe.runtime.layer_step import Runtime
from wdmoe.runtime.loading import build_bs_model, check_dtype, check_torch_device
from wdmoe.runtime.telemetry import Phase, StepRecord, Telemetry, last_request, summarize

if TYPE_CHECKING:
    from wdmoe.config import Scenario
    from wdmoe.policy.base import Policy
    from wdmoe.runtime.wireless import WirelessDecider


class DistributedMoE:
    """The BS engine of a split MoE model: forward and generate mirror transformers' `*ForCausalLM`.

    `temporary`: a temporary directory the model owns (a split made on the fly, a plan's splits): `close()`
    removes it, after the pool. The model is its only owner: nothing else cleans it up.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        pool: DevicePool,
        torch_device: str = "cpu",
        dtype: torch.dtype | None = None,
        temporary: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.runtime = Runtime(pool, manifest.placement, Telemetry())  # pool, liveness, telemetry, air, scratch
        self.hf_model = build_bs_model(root, manifest, self.runtime, check_torch_device(torch_device), dtype)
        self.hf_model.register_forward_pre_hook(self._start_step, with_kwargs=True)
        self.hf_model.register_forward_hook(self._finish_step)
        self._step_start_s = 0.0
        self.kv_arena = KVArena()  # the KV caches of the sequences `step_segments` runs
        self._segments_phase: Phase | None = None  # the phase of the batched step running (step_segments)
        self._last_step: StepRecord | None = None
        self.runtime.hold(temporary)
        self.tokenizer = _load_tokenizer(root / "bs")
        self.wireless: WirelessDecider | None = None
        self.graphed_decode = True  # greedy batch-1 decode on CUDA as CUDA-graph replays where it applies
        self.compile_decode = False  # torch.compile the graphed step (fewer kernels; a minute at the first request)
        self._graphed: dict[bool, GraphedDecoder] = {}  # by compile_decode
        self._shape: MoeShape | None = None  # what model_costs() derives from the config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        num_devices: int | None = None,
        placement: Placement | None = None,
        pool: DevicePool | None = None,
        torch_device: str = "cpu",
        policy: Policy | None = None,
        scenario: Scenario | None = None,
        dtype: torch.dtype | None = None,
        temporary: tempfile.TemporaryDirectory[str] | None = None,
    ) -> DistributedMoE:
        """Load a split directory, or split a Hugging Face model directory on the fly (into a temporary directory
        the model owns).

        Args:
            path: a split directory (has manifest.json) or a HF `save_pretrained` directory.
            num_devices: devices to split over (HF directory; default 8); must match a split directory's.
            placement: (layer, expert) -> devices for an on-the-fly split; default expert e on device e mod D.
            pool: the device pool; default in-process devices, each loading only its own shard.
            torch_device: where the BS (and the in-process devices) compute: "cpu", "cuda" or "cuda:N"; a CUDA
                device is refused when torch sees no GPU.
            policy: the expert-selection policy; None (and no scenario) runs the model's own top-k, no radio.
            scenario: the radio scenario; default `Scenario.default(num_devices)` when a policy is given.
            dtype: torch.float32, torch.bfloat16 or torch.float16: the BS weights and the in-process devices'
                shards are cast to it at load; None (default) keeps the dtype stored in the split (fp32 for the
                tiny models). A `pool` given by the caller loads its own shards in its own dtype.
            temporary: the temporary directory holding the split directory `path` (the caller made the split
                there); the model owns it and `close()` removes it. Refused with a HF directory, whose on-the-fly
                split brings its own.
        """
        path = Path(path)
        check_torch_device(torch_device)
        check_dtype(dtype)
        if num_devices is not None and num_devices < 1:
            raise ValueError(f"num_devices = {num_devices}: need at least 1 device")
        if temporary is not None and not (path / MANIFEST).is_file():
            raise ValueError(f"temporary= holds a split the caller made, but {path} has no {MANIFEST}: give its split")
        path, tmp = split_dir_for(path, num_devices or 8, placement)
        manifest = Manifest.read(path)
        if num_devices is not None and num_devices != manifest.placement.num_devices:
            raise ShardError(
                f"{path} was split for {manifest.placement.num_devices} devices, not num_devices = {num_devices}; "
                "re-run `wdmoe split` with --devices"
            )
        pool = pool or LocalDevicePool(path, manifest, torch_device, dtype)
        model = cls(path, manifest, pool, torch_device, dtype, tmp or temporary)
        if policy is not None or scenario is not None:
            model.set_policy(policy, scenario)
        return model

    def set_policy(self, policy: Policy | None, scenario: Scenario | None = None) -> None:
        """Select experts with `policy` over the links of `scenario` (default scenario if None); the modeled
        latency of every MoE layer step then lands in its LayerRecord. `set_policy(None)` restores plain top-k."""
        from wdmoe.config import Scenario
        from wdmoe.policy.topk import TopK
        from wdmoe.runtime.wireless import WirelessDecider

        if policy is None and scenario is None:
            self.wireless = None
            self.runtime.set_decider(None)
            return
        scenario = scenario or Scenario.default(num_devices=self.num_devices)
        # the decider's own table is the placement's (the simulator's view); each step hands it the live one
        base = {layer: table.copy() for layer, table in self.runtime.routing.base.items()}
        self.wireless = WirelessDecider(scenario, policy or TopK(), self.model_costs(), base, self.num_devices)
        self.runtime.set_decider(self.wireless, scenario.activation_bits)

    def set_compression(self, air_dtype: str | None = None, fusion_tau: float | None = None) -> None:
        """Compress the air (`wdmoe.runtime.air`): activations sent as "fp32", "fp16" or "int8" (per token), and
        token fusion of near-duplicate hidden states (cosine >= fusion_tau); (None, None) turns both off. The
        telemetry and the radio model then count the air dtype's bits."""
        from wdmoe.runtime.air import AirCompression

        air = AirCompression(air_dtype, fusion_tau)
        self.runtime.air = None if air == AirCompression() else air

    def model_costs(self) -> ModelCosts:
        """What the radio model needs of this model: H, one expert's FLOPs per token and bytes (every per-expert
        tensor, biases included, at the BS's dtype) and the BS parameters of each MoE layer's step, derived from
        the experts modules of the model's config (`wdmoe.model.moe_shape`), whatever the family's layout."""
        if self._shape is None:
            self._shape = moe_shape_of_config(self.config)  # a meta-device build: once
        shape = self._shape
        bytes_per_param = float(next(self.hf_model.parameters()).element_size())
        return ModelCosts.of_experts(shape.hidden_size, shape.expert_params, shape.expert_flops_per_token,
                                     bytes_per_param, shape.bs_params_per_layer())

    # -- the transformers surface -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    @property
    def pool(self) -> DevicePool:
        return self.runtime.pool

    @property
    def telemetry(self) -> Telemetry:
        return self.runtime.telemetry

    @property
    def num_devices(self) -> int:
        return self.manifest.placement.num_devices

    @property
    def placement(self) -> Placement:
        return self.manifest.placement

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("attention_mask"), torch.Tensor):
            kwargs["attention_mask"] = kwargs["attention_mask"].to(self.device)
        return self.hf_model(input_ids=input_ids.to(self.device), **kwargs)

    forward = __call__

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """Prompt + new tokens, like transformers' `generate` (KV cache for prefill and decode)."""
        kwargs.setdefault("pad_token_id", self.hf_model.generation_config.pad_token_id or 0)
        if self.wireless is not None:
            self.wireless.start_request()
        input_ids = input_ids.to(self.device)  # token ids may come from the CPU (the CLI, a tokenizer)
        if "attention_mask" not in kwargs:
            kwargs["attention_mask"] = torch.ones_like(input_ids)
        elif isinstance(kwargs["attention_mask"], torch.Tensor):
            kwargs["attention_mask"] = kwargs["attention_mask"].to(self.device)
        graphed = self._graphed_decoder(input_ids, kwargs)
        if graphed is not None:
            decoder, max_new_tokens, eos_ids = graphed
            return decoder.generate(input_ids, max_new_tokens, eos_ids)
        return self.hf_model.generate(input_ids, **kwargs)

    def step_segments(self, tokens: list[list[int]], caches: list[SequenceCache],
                      pause: Callable[[], None] | None = None) -> tuple[torch.Tensor, StepRecord | None]:
        """One forward step over the new tokens of several sequences, each with its own KV cache
        (`wdmoe.runtime.batch.forward_segments`): (N, V) fp32 logits of each sequence's last new token, and the
        step's telemetry record (rows in the order of `tokens`). Phase "prefill" when a sequence starts in it.

        `pause`, in a decode step: called at every MoE layer before its experts run (the serving scheduler runs the
        prefill of requests that arrived meanwhile there, `step_segments` again: a step inside this one). This
        step's state is kept aside meanwhile (`_paused`), and its wall time and BS times exclude the pause. An
        exception from `pause` abandons the step (the scheduler's restart): no cache has grown (caches grow after
        a whole step), and its telemetry record never finishes, so no listener sees it."""
        phase: Phase = "prefill" if any(c.length == 0 for c in caches) else "decode"
        self._segments_phase = phase
        if pause is not None and phase == "decode":
            self.runtime.pause_point = functools.partial(self._paused, pause)
        try:
            logits = forward_segments(self.hf_model, tokens, caches, self.kv_arena)
        finally:
            self._segments_phase, self.runtime.pause_point = None, None
        return logits, self._last_step

    def _paused(self, inner: Callable[[], None]) -> None:
        """Run `inner` (another batched step) inside the running one, at a MoE layer: the running step's telemetry
        record, clocks and channel are set aside and given back after, its clocks moved on by the pause, so its wall
        time and the BS time of its next layer do not count the inner step (which has a record of its own)."""
        wireless = self.wireless.channel_state() if self.wireless is not None else None
        telemetry = self.telemetry
        saved = (self._segments_phase, self._last_step, telemetry.current, self.runtime.pause_point,
                 self._step_start_s, self.runtime.mark_s)
        self.runtime.pause_point = None  # no pause inside the inner step
        start = time.perf_counter()
        try:
            inner()
        finally:
            paused = time.perf_counter() - start
            self._segments_phase, self._last_step, telemetry.current, self.runtime.pause_point = saved[:4]
            self._step_start_s, self.runtime.mark_s = saved[4] + paused, saved[5] + paused
            if self.wireless is not None and wireless is not None:
                self.wireless.restore_channel(wireless)

    def _graphed_decoder(self, input_ids: torch.Tensor,
                         kwargs: dict[str, Any]) -> tuple[GraphedDecoder, int, list[int]] | None:
        """The CUDA-graph decoder for this request (wdmoe.runtime.graphed_decode), or None where transformers'
        generate must run it: off, not CUDA, a policy, batch > 1, padding, or more than greedy search."""
        if not self.graphed_decode or self.device.type != "cuda" or self.wireless is not None:
            return None
        mask = kwargs.get("attention_mask")
        if input_ids.shape[0] != 1 or (isinstance(mask, torch.Tensor) and not bool(mask.all())):
            return None
        plan = plain_greedy(self.hf_model.generation_config, kwargs)
        if plan is None:
            return None
        max_new_tokens, eos_ids = plan
        length = input_ids.shape[1] + max_new_tokens
        decoder = self._graphed.get(self.compile_decode)
        if decoder is None or not decoder.fits(self.runtime, length):
            self._graphed.pop(self.compile_decode, None)
            moe = DeviceMoE.for_runtime(self.runtime, self.device, self.hf_model.dtype)
            if moe is None or not moe.on_gpu:
                return None
            decoder = GraphedDecoder(self.hf_model, self.runtime, moe, cache_length(input_ids.shape[1], max_new_tokens),
                                     True, self.compile_decode)
            self._graphed[self.compile_decode] = decoder
        return decoder, max_new_tokens, eos_ids

    # -- telemetry -----------------------------------------------------------------------------------------
    @property
    def steps(self) -> list[StepRecord]:
        return self.telemetry.steps

    def summary(self, steps: list[StepRecord] | None = None) -> dict[str, Any]:
        """Totals of `steps`: per-device load, and the modeled latency ("latency", TTFT/TPOT...) when every step
        was run with a radio scenario. Default: the last request, i.e. the steps from the most recent prefill on
        (so a `generate` after `set_policy` is summarized alone); pass `model.steps` for everything recorded."""
        return summarize(last_request(self.telemetry.steps) if steps is None else steps, self.num_devices)

    def _start_step(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        source = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
        num_tokens = int(source.numel())
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers renamed it in 5.24
        phase = self._segments_phase
        if phase is None:
            phase = "prefill" if cache is None or cache.get_seq_length() == 0 else "decode"
        self._last_step = self.telemetry.start(phase, num_tokens)
        if self.wireless is not None:
            self.wireless.start_step()
        self._step_start_s = self.runtime.mark_s = time.perf_counter()

    def _finish_step(self, _module: Any, _args: Any, _output: Any) -> None:
        now = time.perf_counter()
        self.telemetry.finish(now - self._step_start_s, now - self.runtime.mark_s)

    def close(self) -> None:
        self._graphed.clear()
        self.runtime.close()


def _load_tokenizer(bs_dir: Path) -> Any:
    if not (bs_dir / "tokenizer.json").is_file() and not (bs_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bs_dir, local_files_only=True)
