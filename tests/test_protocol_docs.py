"""protocol/README.md must document every topic, message kind and header field."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import factories as fx
from protocol import MESSAGE_TYPES, TOPICS
from protocol.embedding import quantize_embedding
from protocol.envelope import KIND_CODES

DOC = (Path(__file__).resolve().parents[1] / "protocol" / "README.md").read_text()


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].startswith("`edgeloop/"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("spec", TOPICS, ids=lambda s: s.kind)
def test_every_topic_is_in_the_table(spec):
    row = _rows().get(spec.kind)
    assert row, f"topic kind {spec.kind!r} missing from the table in protocol/README.md"
    assert row[1] == f"`{spec.pattern}`"
    assert row[2] == spec.direction
    assert row[3] == str(spec.qos)
    assert row[4] == ("yes" if spec.retained else "no")


def test_no_undocumented_rows():
    assert set(_rows()) == {s.kind for s in TOPICS}


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.KIND)
def test_every_field_is_documented(cls):
    section = re.search(rf"^### {cls.KIND}\n(.*?)(?=^### |^## |\Z)", DOC, re.S | re.M)
    assert section, f"no '### {cls.KIND}' section in protocol/README.md"
    documented = set(re.findall(r"`([a-z0-9_]+)`", section.group(1)))
    example = fx.ALL[cls.KIND]()
    if cls.KIND == "sample":  # optional fields appear in the header only when set
        example = fx.sample(embedding=quantize_embedding(np.ones(8, np.float32)))
    if cls.KIND == "telemetry":
        example = fx.telemetry(camera_hist={"gate": {"circle": (1,) * 10}})
    missing = set(example.header()) - documented
    assert not missing, f"{cls.KIND} fields not documented: {sorted(missing)}"


def test_kind_codes_documented():
    for kind, code in KIND_CODES.items():
        assert f"{code} {kind}" in DOC
