"""agent/README.md documents every model-card key, with a worked example per output type that really parses."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path

import pytest

from protocol.modelcard import InputSpec, ModelCard, OutputSpec, card_from_dict

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "agent" / "README.md").read_text()
SECTION = README.split("## Model cards\n", 1)[1].split("\n## ", 1)[0]
OUTPUT_TYPES = typing.get_args(typing.get_args(OutputSpec)[0])


def _subsection(title_part: str) -> str:
    parts = re.split(r"^#### ", SECTION, flags=re.M)
    found = [p for p in parts[1:] if title_part in p.splitlines()[0]]
    assert found, f"agent/README.md has no '#### ...{title_part}...' table under 'Model cards'"
    return found[0]


def _documented(text: str) -> set[str]:
    keys = set()
    for line in text.splitlines():
        m = re.match(r"\| ((?:`[a-z_]+`(?:, )?)+) \|", line)
        if m:
            keys |= set(re.findall(r"`([a-z_]+)`", m.group(1)))
    return keys


def _examples() -> list[dict]:
    blocks = re.findall(r"```toml\n(.*?)```", SECTION, re.S)
    return [tomllib.loads(b) for b in blocks if "[output]" in b]


def test_top_level_keys_documented():
    missing = set(ModelCard.model_fields) - _documented(_subsection("Top-level card keys"))
    assert not missing, f"card keys not documented in agent/README.md: {sorted(missing)}"


def test_input_keys_documented():
    missing = set(InputSpec.model_fields) - _documented(_subsection("[input]"))
    assert not missing, f"card input keys not documented in agent/README.md: {sorted(missing)}"


@pytest.mark.parametrize("cls", OUTPUT_TYPES, ids=lambda c: c.model_fields["type"].default)
def test_output_keys_documented(cls):
    kind = cls.model_fields["type"].default
    missing = set(cls.model_fields) - _documented(_subsection(f'type = "{kind}"'))
    assert not missing, f"output type {kind!r}: keys not documented in agent/README.md: {sorted(missing)}"


def test_every_example_is_a_valid_card_and_every_layout_has_one():
    cards = [card_from_dict(data, "agent/README.md example") for data in _examples()]
    outs = [c.output for c in cards]
    types = {o.type for o in outs}
    assert types >= {"classification", "boxes_scores_labels", "yolo", "yolox"}
    assert any(o.type == "yolo" and o.objectness and not o.transposed for o in outs)  # v5/v7
    assert any(o.type == "yolo" and o.transposed and not o.objectness for o in outs)  # v8/v11
    assert any(o.type == "yolox" and o.output for o in outs)  # concatenated
    assert any(o.type == "yolox" and o.box_outputs for o in outs)  # per stride, separate tensors
    assert any(c.embedding_output for c in cards)


@pytest.mark.parametrize("card", sorted((ROOT / "agent" / "cards").glob("*.card.toml")), ids=lambda p: p.name)
def test_shipped_cards_parse_and_are_documented(card):
    parsed = card_from_dict(tomllib.loads(card.read_text()), str(card))
    assert f"agent/cards/{card.name}" in README
    if parsed.output.type == "ssd":
        assert "ssd" in _subsection('type = "ssd"')
