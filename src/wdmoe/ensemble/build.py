"""Building the MoE² experts: domain corpora -> one shared tokenizer -> one small causal LM per domain (`wdmoe train`).

Contract: `prepare(root)` writes `root/corpora/<domain>/` for every domain and `root/tokenizer/` (a byte-level BPE of
`EXPERT_VOCAB_SIZE` entries trained on the union of the domains' training text), so that the GPU host needs neither
the Debian packages nor the tokenizer trainer's determinism. `train_expert(recipe, root, device)` trains one expert
into `root/experts/<name>/` with `wdmoe.train.loop.train` and the shared tokenizer. `RECIPES` is the shipped set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from wdmoe.atomic import write_dir_atomic, write_json_atomic
from wdmoe.train.config import EXPERT_VOCAB_SIZE, PRESETS
from wdmoe.train.data import read_documents
from wdmoe.train.domains import DOMAINS, domain_names, prepare_domain_corpus
from wdmoe.train.loop import train
from wdmoe.train.tokenizer import train_tokenizer


@dataclass(frozen=True)
class Recipe:
    name: str  # the expert's id, e.g. "tech-s"
    domain: str  # a wdmoe.train.domains name
    preset: str  # a wdmoe.train.config.PRESETS name
    steps: int  # optimizer steps
    batch_size: int = 32  # sequences of 128 tokens per step


# v3: batch 32 x 128 tokens, and a cosine schedule that ends near where a 2000-step run of the specialist began
# to overfit its small corpus (best held-out step 400-1300; the generalist, 4x the text, was still improving at 2000).
# The loop keeps the checkpoint of the lowest held-out loss. (v1: 600 steps of 16 sequences, best at its last step.)
RECIPES = (
    Recipe("tech-s", "tech", "expert-small", 900),
    Recipe("jargon-d", "jargon", "expert-dense", 1600),
    Recipe("lit-moe", "literature", "expert-moe", 600),
    Recipe("society-d", "society", "expert-dense", 900),
    Recipe("general-moe", "all", "expert-moe", 3000),
)


def prepare(root: Path) -> dict[str, dict[str, int]]:
    """Domain corpora and the shared tokenizer under `root`; returns documents per part per domain."""
    counts = {name: prepare_domain_corpus(name, root / "corpora" / name) for name in domain_names()}
    texts = [doc for name in DOMAINS for doc in read_documents(root / "corpora" / name / "train.txt")]
    tokenizer = train_tokenizer(texts, EXPERT_VOCAB_SIZE)
    write_dir_atomic(root / "tokenizer", tokenizer.save_pretrained)
    return counts


def train_expert(recipe: Recipe, root: Path, device: str = "cpu", progress: bool = False) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    steps = recipe.steps
    cfg = PRESETS[recipe.preset](
        device=device,
        steps=steps,
        batch_size=recipe.batch_size,
        warmup_steps=min(100, steps // 10),
        eval_every=max(1, min(100, steps // 10)),
    )
    out = root / "experts" / recipe.name
    result = train(cfg, root / "corpora" / recipe.domain, out, progress=progress, tokenizer=tokenizer)
    summary = {**asdict(recipe), **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}}
    write_json_atomic(out / "recipe.json", summary)
    return summary


if __name__ == "__main__":  # python -m wdmoe.ensemble.build ROOT prepare | ROOT train cpu|cuda [EXPERT ...]
    import sys

    root, stage = Path(sys.argv[1]), sys.argv[2]
    if stage == "prepare":
        print(json.dumps(prepare(root)))
    else:
        wanted = set(sys.argv[4:]) or {r.name for r in RECIPES}
        for recipe in (r for r in RECIPES if r.name in wanted):
            print(json.dumps(train_expert(recipe, root, sys.argv[3])), flush=True)
