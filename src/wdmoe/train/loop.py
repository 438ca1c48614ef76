"""Training loop, stage 3 of the training pipeline: corpus -> tokenizer -> a trained Mixtral-family MoE checkpoint.

Contract: `train(cfg, corpus_dir, out_dir)` reads `train.txt` / `heldout.txt` written by `wdmoe.train.data`, trains a
byte-level BPE tokenizer on the training documents, then trains `MixtralForCausalLM` on random packed windows of
`block_size` tokens of the `<s> doc </s>` stream (AdamW, linear warmup then cosine decay, bf16 autocast on CUDA and
fp32 on CPU). The loss is the LM loss plus `router_aux_loss_coef` x the load-balancing loss (transformers adds it
when `output_router_logits` is on). Held-out loss is the LM loss alone over fixed consecutive blocks of the held-out
stream. Writes `out_dir/model` (config, safetensors weights in `save_dtype`, tokenizer files) at the evaluation with
the lowest held-out loss (the corpus is small: a long run overfits, and the shipped model is the best one seen),
`out_dir/checkpoint` (the same, of the latest evaluation) and `out_dir/train_log.json`.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import MixtralForCausalLM, PreTrainedTokenizerFast

from wdmoe.atomic import write_dir_atomic, write_json_atomic
from wdmoe.train.config import BOS_ID, EOS_ID, PAD_ID, TrainConfig, build_model, save_dtype
from wdmoe.train.data import read_documents
from wdmoe.train.tokenizer import encode_documents, train_tokenizer, unigram_perplexity_from_ids

MODEL_DIR, CHECKPOINT_DIR, LOG_FILE = "model", "checkpoint", "train_log.json"


@dataclass(frozen=True)
class EvalRecord:
    step: int
    heldout_loss: float  # nats per token
    heldout_perplexity: float


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    log_path: Path
    num_parameters: int
    weight_bytes: int  # of the saved weights, in save_dtype
    save_dtype: str
    first_loss: float  # training loss (LM + aux) of step 0
    final_loss: float  # training loss of the last step
    best_step: int  # the evaluation with the lowest held-out loss: the weights in model_dir
    heldout_loss: float  # at best_step
    heldout_perplexity: float  # at best_step
    final_heldout_loss: float  # at the last step
    unigram_perplexity: float  # the add-one unigram baseline on the same held-out tokens
    wall_time_s: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay from `lr` to `lr * min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def sample_batch(stream: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """`batch_size` windows of `block_size` consecutive tokens at uniform random offsets; (batch, block)."""
    starts = torch.randint(0, len(stream) - block_size + 1, (batch_size,), generator=generator)
    index = starts[:, None] + torch.arange(block_size)  # (batch, block)
    return stream[index.to(stream.device)]


def heldout_blocks(stream: torch.Tensor, block_size: int, max_blocks: int) -> torch.Tensor:
    """The first `max_blocks` consecutive, non-overlapping blocks of the held-out stream; (blocks, block_size)."""
    count = min(len(stream) // block_size, max_blocks)
    if count == 0:
        raise ValueError(
            f"the held-out text has {len(stream)} tokens, fewer than one block of block_size = {block_size}: "
            "lower --block-size or hold out more text"
        )
    return stream[: count * block_size].view(count, block_size)


@torch.no_grad()
def evaluate(
    model: MixtralForCausalLM, blocks: torch.Tensor, batch_size: int, autocast: AbstractContextManager[Any]
) -> float:
    """Mean LM loss (nats per predicted token, no aux loss) over `blocks`."""
    model.eval()
    total, count = 0.0, 0
    for chunk in blocks.split(batch_size):
        with autocast:
            out = model(input_ids=chunk, labels=chunk, output_router_logits=False)
        predicted = chunk.numel() - chunk.shape[0]  # the first token of each block is not predicted
        total += float(out.loss) * predicted
        count += predicted
    model.train()
    return total / count


def make_optimizer(model: MixtralForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, projections, experts, routers), none on norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=cfg.device == "cuda")


def save_checkpoint(
    model: MixtralForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path, dtype: torch.dtype
) -> int:
    """Save a CPU copy in `dtype` (safetensors) and the tokenizer into `directory`; return the weight bytes.

    The saved config turns `output_router_logits` off: it only serves the training loss, and inference (HF or wdmoe)
    should not compute the load-balancing loss at every step.
    """
    clone = copy.deepcopy(model)
    clone.to(device="cpu", dtype=dtype)  # type: ignore[call-arg]  # functools.wraps hides that .to is a method
    clone.config.output_router_logits = False

    def fill(staging: Path) -> None:
        clone.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    write_dir_atomic(directory, fill)  # a kill mid-save keeps the previous checkpoint whole
    return sum(p.numel() * p.element_size() for p in clone.parameters())


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def train(
    cfg: TrainConfig, corpus_dir: Path, out_dir: Path, progress: bool = True,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> TrainResult:
    """Train the tokenizer and the model of `cfg` on `corpus_dir`; write the model and the log into `out_dir`.

    A given `tokenizer` (of `cfg.model.vocab_size` entries) is used instead of training one: the MoE² experts share
    one, so that their next-token distributions live on the same vocabulary.
    """
    started = time.perf_counter()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' but torch sees no CUDA device: use --device cpu or a CUDA build of torch")
    train_docs, heldout_docs = read_documents(corpus_dir / "train.txt"), read_documents(corpus_dir / "heldout.txt")
    if tokenizer is None:
        tokenizer = train_tokenizer(train_docs, cfg.model.vocab_size)
    elif len(tokenizer) != cfg.model.vocab_size:
        raise ValueError(f"the given tokenizer has {len(tokenizer)} entries; the model's vocab_size is "
                         f"{cfg.model.vocab_size}: train the tokenizer with that many")
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (BOS_ID, EOS_ID, PAD_ID), f"special token ids {ids} differ from the model config's"
    device = torch.device(cfg.device)
    train_stream = torch.tensor(encode_documents(tokenizer, train_docs), dtype=torch.long, device=device)
    heldout_stream = torch.tensor(encode_documents(tokenizer, heldout_docs), dtype=torch.long, device=device)
    if len(train_stream) <= cfg.block_size:
        raise ValueError(
            f"the training text has {len(train_stream)} tokens, not more than block_size = {cfg.block_size}"
        )
    eval_blocks = heldout_blocks(heldout_stream, cfg.block_size, cfg.eval_batches * cfg.batch_size)
    unigram = unigram_perplexity_from_ids(
        train_stream.tolist(), eval_blocks[:, 1:].flatten().tolist(), cfg.model.vocab_size
    )

    model = build_model(cfg.model, cfg.seed)
    model.to(device)  # type: ignore[call-arg, arg-type]  # functools.wraps hides that .to is a method
    model.train()
    num_parameters = sum(p.numel() for p in model.parameters())
    dtype = save_dtype(num_parameters)
    if progress:
        tqdm.write(
            f"model: {num_parameters:,} parameters, {num_parameters * dtype.itemsize / 1e6:.2f} MB of weights in "
            f"{str(dtype).removeprefix('torch.')}; {len(train_stream):,} training tokens, "
            f"{eval_blocks.numel():,} held-out tokens evaluated; device {device_name(cfg.device)}"
        )
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)

    def autocast() -> AbstractContextManager[Any]:
        # A fresh context each time: one autocast object should not be entered twice.
        return torch.autocast("cuda", dtype=torch.bfloat16) if cfg.device == "cuda" else nullcontext()

    losses: list[dict[str, float]] = []
    evals: list[EvalRecord] = []
    pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
    log: dict[str, Any] = {}
    best: EvalRecord | None = None
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(train_stream, cfg.batch_size, cfg.block_size, generator)  # (batch, block)
        with autocast():
            out = model(input_ids=batch, labels=batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        pending.append((step, lr, out.loss.detach(), out.aux_loss.detach()))
        last = step == cfg.steps - 1
        if (step + 1) % cfg.log_every == 0 or step == 0 or last:
            losses.extend(_flush(pending, cfg.model.router_aux_loss_coef))
            pending.clear()
            bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}", lr=f"{lr:.2e}")
        if (step + 1) % cfg.eval_every == 0 or last:
            heldout = evaluate(model, eval_blocks, cfg.batch_size, autocast())
            evals.append(EvalRecord(step + 1, heldout, math.exp(heldout)))
            improved = best is None or heldout < best.heldout_loss
            if progress:
                bar.write(
                    f"step {step + 1}: held-out loss {heldout:.4f}, perplexity {math.exp(heldout):.2f}"
                    + (f" (best so far: saved to {MODEL_DIR}/)" if improved else "")
                )
            if improved:
                best = evals[-1]
                save_checkpoint(model, tokenizer, out_dir / MODEL_DIR, dtype)
            weight_bytes = save_checkpoint(model, tokenizer, out_dir / CHECKPOINT_DIR, dtype)
            assert best is not None
            log = {
                "config": cfg.to_json(), "device": cfg.device, "device_name": device_name(cfg.device),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "num_parameters": num_parameters, "weight_bytes": weight_bytes,
                "save_dtype": str(dtype).removeprefix("torch."),
                "train_tokens": len(train_stream), "heldout_tokens_evaluated": int(eval_blocks[:, 1:].numel()),
                "tokens_seen": (step + 1) * cfg.batch_size * cfg.block_size,
                "unigram_perplexity": unigram, "wall_time_s": time.perf_counter() - started,
                "steps_done": step + 1, "best": asdict(best), "evals": [asdict(e) for e in evals], "losses": losses,
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out_dir / LOG_FILE, log)
    bar.close()
    return TrainResult(
        model_dir=out_dir / MODEL_DIR, log_path=out_dir / LOG_FILE, num_parameters=num_parameters,
        weight_bytes=log["weight_bytes"], save_dtype=log["save_dtype"], first_loss=losses[0]["loss"],
        final_loss=losses[-1]["loss"], best_step=log["best"]["step"], heldout_loss=log["best"]["heldout_loss"],
        heldout_perplexity=log["best"]["heldout_perplexity"], final_heldout_loss=evals[-1].heldout_loss,
        unigram_perplexity=unigram, wall_time_s=log["wall_time_s"],
    )


def _flush(pending: list[tuple[int, float, torch.Tensor, torch.Tensor]], aux_coef: float) -> list[dict[str, float]]:
    """Turn the steps' loss tensors into numbers with one device sync (not one per step)."""
    values = torch.stack([torch.stack([loss.float(), aux.float()]) for _, _, loss, aux in pending]).tolist()
    return [
        {"step": step, "lr": lr, "loss": loss, "lm_loss": loss - aux_coef * aux, "aux_loss": aux}
        for (step, lr, _, _), (loss, aux) in zip(pending, values, strict=True)
    ]
