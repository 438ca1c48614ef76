"""wdmoe.radio is the one home of the radio math: no module outside src/wdmoe/radio writes Shannon, the roofline
or dBm arithmetic (issue 14, finding 4).

The scan reads the source with `ast` (comments and docstrings cannot trip it) and flags:
  - Shannon: a call of log1p or log2 (any variant: log1p_array), or log(1 + x) (the rate b log2(1 + s/b) in any
    of its encodings);
  - ln 2: log(2) or a float literal equal to ln 2 or log2(e) (the solver form's constant);
  - roofline: max(...) / maximum(...) of two quotients, one over a FLOP count, one over a byte count;
  - dBm: 10 ** (x / 10) or power(10, ...), or arithmetic on a name that says dBm.
The scanner is checked against snippets of each encoding first, so a passing scan means something.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "wdmoe"
HOME = SRC / "radio"
_LN2 = math.log(2.0)
_LOG2_E = 1.0 / _LN2


def _name(node: ast.AST) -> str:
    """The called or referenced name: `np.log1p` -> 'log1p', `x.flops_per_s` -> 'flops_per_s'."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _names_in(node: ast.AST) -> list[str]:
    return [_name(n).lower() for n in ast.walk(node) if isinstance(n, ast.Name | ast.Attribute)]


def _is_number(node: ast.AST, value: float) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and node.value == value


def _quotient_over(node: ast.AST, words: tuple[str, ...]) -> bool:
    """Whether `node` holds a division with a name containing one of `words`."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and any(w in name for w in words
                                                                                for name in _names_in(n))
               for n in ast.walk(node))


def _kind(node: ast.AST) -> str | None:
    """The radio formula `node` writes, or None."""
    if isinstance(node, ast.Call):
        called = _name(node.func)
        if called.startswith(("log1p", "log2")):
            return "shannon"
        if called == "log" and node.args:
            arg = node.args[0]
            if _is_number(arg, 2):
                return "ln2"
            if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add) and _is_number(arg.left, 1):
                return "shannon"
        if called == "power" and node.args and _is_number(node.args[0], 10):
            return "dbm"
        if called in ("max", "maximum") and len(node.args) >= 2:
            flops = any(_quotient_over(a, ("flops",)) for a in node.args)
            memory = any(_quotient_over(a, ("bytes", "mem")) for a in node.args)
            if flops and memory:
                return "roofline"
    if isinstance(node, ast.Constant) and isinstance(node.value, float) and any(
        math.isclose(node.value, c, rel_tol=1e-12) for c in (_LN2, _LOG2_E)
    ):
        return "ln2"
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow) and _is_number(node.left, 10) and any(
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) for n in ast.walk(node.right)
        ):
            return "dbm"
        if any("dbm" in _name(side) for side in (node.left, node.right)):
            return "dbm"
    return None


def scan(source: str) -> list[tuple[int, str]]:
    """(line, kind) of every radio formula written in `source`."""
    return sorted({(n.lineno, kind) for n in ast.walk(ast.parse(source)) if (kind := _kind(n)) is not None})


def violations() -> dict[str, list[str]]:
    """{path relative to src/wdmoe: sorted kinds found} for every module outside radio/."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if HOME in path.parents:
            continue
        kinds = sorted({kind for _, kind in scan(path.read_text(encoding="utf-8"))})
        if kinds:
            found[str(path.relative_to(SRC))] = kinds
    return found


@pytest.mark.parametrize(("snippet", "kind"), [
    ("r = b * np.log2(1.0 + s / b)", "shannon"),
    ("r = b * np.log1p(s / b) * LOG2E", "shannon"),
    ("np.log1p(y, out=log_term)", "shannon"),
    ("l = math.log1p(y)", "shannon"),
    ("log_term[...] = log1p_array(y)", "shannon"),
    ("r = b * np.log(1 + s / b) / c", "shannon"),
    ("_LN2 = math.log(2.0)", "ln2"),
    ("_LN2 = float(np.log(2.0))", "ln2"),
    ("LN2 = 0.6931471805599453", "ln2"),
    ("LOG2_E = 1.4426950408889634", "ln2"),
    ("s = b * np.expm1(rate / b * np.log(2.0))", "ln2"),
    ("t = max(f / flops.item(d), w_bytes / mem.item(d)) + o", "roofline"),
    ("t = np.maximum(n * (flops_per_token / p.flops_per_s), weight_bytes / p.mem_bytes_per_s)", "roofline"),
    ("w = 10 ** (scenario.bs_tx_power_dbm / 10) / 1e3", "dbm"),
    ("w = 10.0 ** ((p - 30.0) / 10.0)", "dbm"),
    ("w = np.power(10.0, p / 10.0)", "dbm"),
    ("w = tx_power_dbm - 30.0", "dbm"),
])
def test_scan_catches_each_encoding(snippet: str, kind: str) -> None:
    assert [k for _, k in scan(snippet)] == [kind]


@pytest.mark.parametrize("snippet", [
    "n = 10**9",
    "ms = latency_s * 1e3",
    "server = max(fitting, key=lambda k: (statuses[k].effective_profile().flops_per_s, -k))",
    "logp = np.log((table + 1.0) / (table.sum() + 2))",
    "x = np.log(p / q)",
    "b = max(a, c)",
    "power_dbm = 43.0",
])
def test_scan_leaves_other_code_alone(snippet: str) -> None:
    assert scan(snippet) == []


def test_radio_math_lives_in_radio() -> None:
    """Nothing outside radio/ writes the radio math (the scan found five modules doing so when it was written)."""
    assert violations() == {}
