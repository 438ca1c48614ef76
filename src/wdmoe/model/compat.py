"""The transformers versions wdmoe runs on, and the clear refusal where a model type needs a newer one.

wdmoe is tested with transformers 5.17 (the GPU machine's image) and 5.24 (the development venv); pyproject
allows >=5.0,<6. What differs between them is detected from what the installed transformers has, never from its
version string (`wdmoe.model.discover`: the decorator's `has_post_expert_norm` flag exists only from 5.24; the
loader API that `wdmoe.model.stream_split` uses is the same in both). The version appears only in messages:
`config_from_dir` / `config_for_model` turn transformers' "unrecognized model type" into an UnsupportedModelError
naming the installed version, and `newer_note` tells a user of 5.17 that a model type found "dense" has the
standard experts module in 5.24 (NEWER_MOE_TYPES).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wdmoe.errors import UnsupportedModelError

TESTED_VERSIONS = ("5.17", "5.24")
# Model types whose `*ForCausalLM` uses the standard experts module (@use_experts_implementation) in transformers
# 5.24 but not in 5.17: absent from 5.17, except aria_text, whose 5.17 experts class is its own (not standard).
NEWER_MOE_TYPES = frozenset({
    "aria_text", "bailing_hybrid", "beam", "dots3_note", "dots3_note_text", "flint", "inkling2_loop_text",
    "inkling2_text", "kolibri1", "lara_mini",
})
NEWEST_TESTED = TESTED_VERSIONS[-1]


def installed_version() -> str:
    import transformers  # lazy: this module is imported by modules that import transformers only when used

    return str(transformers.__version__)


def knows_model_type(model_type: str) -> bool:
    """True when the installed transformers has a config class for `model_type`."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def newer_note(model_type: str) -> str:
    """A sentence for messages about `model_type` where a newer transformers supports it, else ""."""
    if model_type not in NEWER_MOE_TYPES:
        return ""
    return (f" transformers {installed_version()} is installed; model type {model_type!r} has the standard experts "
            f"module from transformers {NEWEST_TESTED}: upgrade transformers to run it.")


def unknown_type_error(model_type: str, where: str) -> UnsupportedModelError:
    note = newer_note(model_type) or (
        f" A newer transformers may know it (wdmoe is tested with transformers {', '.join(TESTED_VERSIONS)})."
    )
    return UnsupportedModelError(
        f"{where}: model type {model_type!r} is unknown to the installed transformers {installed_version()}.{note}"
    )


def config_from_dir(model_dir: Path) -> Any:
    """`AutoConfig.from_pretrained(model_dir)` (local files only); a model type the installed transformers does not
    know raises UnsupportedModelError naming the version (transformers' own ValueError otherwise)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except ValueError:
        model_type = _declared_type(Path(model_dir) / "config.json")
        if model_type is not None and not knows_model_type(model_type):
            raise unknown_type_error(model_type, str(Path(model_dir) / "config.json")) from None
        raise


def config_for_model(model_type: str, **fields: Any) -> Any:
    """`AutoConfig.for_model(model_type, **fields)`, with the same refusal as `config_from_dir`."""
    if not knows_model_type(model_type):
        raise unknown_type_error(model_type, "the split's config")
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **fields)


def _declared_type(config_file: Path) -> str | None:
    try:
        value = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
