"""Lower floors never import upward: agent/, trainer/ and protocol/ must not import the edgeloop CLI package.

protocol/ is the lowest floor (no agent/trainer imports), agent/ never imports trainer/. Checked on the
source's import statements, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"protocol": {"edgeloop", "agent", "trainer", "bench"},
             "agent": {"edgeloop", "trainer", "bench"},
             "trainer": {"edgeloop", "bench"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_floor_does_not_import_upward(floor):
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[floor])
           for p in sorted((ROOT / floor).rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}
