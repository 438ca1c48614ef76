"""The model wdmoe ships, and the default model of `run`, `demo`, `eval` and `serve`.

The trained model lives in the package (`wdmoe/data/shipped-model/`, a HF `save_pretrained` directory with its
tokenizer). If a checkout does not have it, `default_model_dir()` falls back to a small random Mixtral, saved once
under the user's cache directory, and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from wdmoe.atomic import write_dir_atomic

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED_DIR = DATA_DIR / "shipped-model"
HELDOUT_TEXT = DATA_DIR / "heldout.txt"  # the shipped model's held-out documents
CONTINUATION_TASK = DATA_DIR / "tasks" / "continuation.jsonl"  # pick the true continuation among four
UNIGRAM_COUNTS = "unigram_counts.json"  # in a model directory: training-token counts per id


def has_shipped_model() -> bool:
    return (SHIPPED_DIR / "config.json").is_file()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wdmoe"


def random_model_dir() -> Path:
    """A small random Mixtral (hidden 128, 4 layers, 8 experts, top-2), built once and cached."""
    path = cache_dir() / "random-mixtral-h128-l4"
    if not (path / "config.json").is_file():
        from wdmoe.model.tiny import tiny_model

        model = tiny_model("mixtral", seed=0, hidden_size=128, num_hidden_layers=4, intermediate_size=256)
        write_dir_atomic(path, model.save_pretrained)  # a kill mid-save leaves no config without weights
    return path


def default_model_dir() -> Path:
    """The shipped trained model if present, else the cached random Mixtral."""
    return SHIPPED_DIR if has_shipped_model() else random_model_dir()
