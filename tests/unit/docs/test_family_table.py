"""The README's family table is the one generated from the code (wdmoe.model.families.table)."""

from __future__ import annotations

from pathlib import Path

from wdmoe.model.families.registry import FAMILIES
from wdmoe.model.families.table import markdown, readme_table, table_rows
from wdmoe.model.zoo import NOT_BUILT, moe_model_types

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_family_table_equals_the_generated_one() -> None:
    assert readme_table(README.read_text()) == markdown(), "run: python -m wdmoe.model.families.table"


def test_table_covers_every_moe_model_type_and_the_registered_families() -> None:
    types = moe_model_types()
    rows = {row[0].strip("`"): row for row in table_rows(types)}
    assert set(rows) == set(types)
    assert {t for f in FAMILIES for t in f.model_types} <= set(types)
    assert all(NOT_BUILT[t] in rows[t][3] for t in NOT_BUILT if t in rows)
