"""The transformers-version boundary (`wdmoe.model.compat`): a model type the installed transformers does not know,
or knows without the standard experts module, is refused by name with the installed version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import transformers

from wdmoe.errors import UnsupportedModelError
from wdmoe.model.compat import NEWER_MOE_TYPES, config_for_model, config_from_dir, newer_note
from wdmoe.model.discover import DECORATOR_FLAGS, OPTIONAL_FLAGS, experts_sites
from wdmoe.model.zoo import moe_model_types, newer_moe_types, tiny_any_model


def test_an_unknown_model_type_is_refused_naming_the_installed_transformers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_moe", "hidden_size": 8}))
    with pytest.raises(UnsupportedModelError, match=re.escape(f"'no_such_moe' is unknown to the installed transformers "
                                                    f"{transformers.__version__}")):
        config_from_dir(tmp_path)
    with pytest.raises(UnsupportedModelError, match=re.escape("tested with transformers 5.17, 5.24")):
        config_for_model("no_such_moe")


def test_a_known_model_type_still_reads(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "hidden_size": 32}))
    assert config_from_dir(tmp_path).hidden_size == 32
    assert config_for_model("mixtral", hidden_size=16).hidden_size == 16


def test_the_newer_types_are_named_with_the_version_that_has_them() -> None:
    note = newer_note("beam")
    assert f"transformers {transformers.__version__} is installed" in note and "from transformers 5.24" in note
    assert newer_note("mixtral") == ""
    installed = set(moe_model_types())
    # each newer type is either listed (a transformers that has it) or skipped with that note, never both
    assert set(newer_moe_types()) == NEWER_MOE_TYPES - installed
    assert all("upgrade transformers" in why for why in newer_moe_types().values())


def test_discovery_reads_the_flags_each_version_sets() -> None:
    """5.17's decorator sets no `has_post_expert_norm`: discovery reports it False there, the class's value on 5.24."""
    model = tiny_any_model("mixtral")
    (site,) = experts_sites(model)[:1]
    module = model.get_submodule(site.path)
    assert set(site.flags) == set(DECORATOR_FLAGS + OPTIONAL_FLAGS)
    for flag in OPTIONAL_FLAGS:
        assert site.flags[flag] == bool(getattr(module, flag, False))


def test_experts_instances_as_5_17_makes_them_are_still_found() -> None:
    """transformers 5.17's decorator sets no `has_post_expert_norm` on the instance: with it removed (as 5.17 builds
    the module), discovery finds the same sites, with the flag False (keeps the 5.17 fix covered under 5.24)."""
    model = tiny_any_model("mixtral")
    expected = experts_sites(model)
    for site in expected:
        module = model.get_submodule(site.path)
        if "has_post_expert_norm" in vars(module):
            delattr(module, "has_post_expert_norm")
        assert not hasattr(module, "has_post_expert_norm")
    found = experts_sites(model)
    assert [(s.layer, s.path, s.tensors) for s in found] == [(s.layer, s.path, s.tensors) for s in expected]
    assert len(found) == 2 and all(s.flags["has_post_expert_norm"] is False for s in found)
