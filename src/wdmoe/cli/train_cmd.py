"""`wdmoe train`: prepare the offline corpus (unless given), train the tokenizer and the MoE model, save both."""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from wdmoe.cli.common import JsonOut, console, offline, print_json, user_errors


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


class Preset(StrEnum):
    shipped = "shipped"
    tiny = "tiny"
    expert_small = "expert-small"
    expert_dense = "expert-dense"
    expert_moe = "expert-moe"


def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory: model/, checkpoint/, train_log.json.")],
    corpus: Annotated[
        Path | None, typer.Option(help="A corpus directory (train.txt, heldout.txt); default: prepared in OUT/corpus.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step (default: the preset's).")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per sequence (default: the preset's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    device: Annotated[Device, typer.Option(help="cpu (fp32) or cuda (bf16 autocast).")] = Device.cpu,
    seed: Annotated[int, typer.Option(help="Seed of the initialization and of the batch sampling.")] = 0,
    config: Annotated[
        Preset,
        typer.Option(help="Model and run preset: shipped (6.1M parameters), tiny, or an MoE² expert's (expert-*)."),
    ] = Preset.shipped,
    domain: Annotated[
        str | None,
        typer.Option(help="Train on one text domain only (MoE² experts; see `wdmoe.train.domains`), e.g. jargon."),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Train the Mixtral-family MoE that wdmoe ships, on offline text (Debian fortunes and the Jargon File)."""
    offline()
    with user_errors():
        from wdmoe.train.config import PRESETS
        from wdmoe.train.data import prepare_corpus
        from wdmoe.train.loop import train as run_training

        overrides = {"steps": steps, "batch_size": batch_size, "block_size": block_size, "lr": lr}
        settings = {key: value for key, value in overrides.items() if value is not None}
        if "steps" in settings:
            # Keep the warmup and the evaluations sensible for short runs.
            settings["warmup_steps"] = min(100, settings["steps"] // 10)
            settings["eval_every"] = max(1, min(100, settings["steps"] // 10))
        cfg = PRESETS[config.value](device=device.value, seed=seed, **settings)
        if corpus is None and domain is not None:
            from wdmoe.train.domains import prepare_domain_corpus

            corpus = out / "corpus"
            counts = prepare_domain_corpus(domain, corpus)
            if not json_out:
                console.print(f"domain {domain!r} corpus in {corpus}: {counts} documents")
        if corpus is None:
            corpus = out / "corpus"
            info = prepare_corpus(corpus)
            if not json_out:
                console.print(
                    f"corpus in {corpus}: {info.train_documents} training and {info.heldout_documents} held-out "
                    f"documents, {info.train_characters + info.heldout_characters:,} characters"
                )
        result = run_training(cfg, corpus, out, progress=not json_out)
    if json_out:
        print_json({k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()})
        return
    console.print(
        f"saved {result.model_dir}: {result.num_parameters:,} parameters, {result.weight_bytes / 1e6:.2f} MB of "
        f"weights ({result.save_dtype})\n"
        f"training loss {result.first_loss:.3f} -> {result.final_loss:.3f}; held-out loss {result.heldout_loss:.3f}, "
        f"perplexity {result.heldout_perplexity:.2f} at step {result.best_step} (unigram baseline "
        f"{result.unigram_perplexity:.2f}; last step: loss {result.final_heldout_loss:.3f}); "
        f"{result.wall_time_s:.1f} s; log: {result.log_path}"
    )
