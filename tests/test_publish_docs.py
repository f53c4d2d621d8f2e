"""docs/publishing.md stays honest: every setting and CLI option of the publishing side is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trainer.publish import keys_cli, publish_cli, rollback_cli
from trainer.publish.gate import GateConfig
from trainer.publish.health import RolloutPolicy
from trainer.publish.service import PublishingConfig
from trainer.rounds.pipeline import RoundsConfig

DOC = (Path(__file__).resolve().parents[1] / "docs" / "publishing.md").read_text()


@pytest.mark.parametrize("model", [PublishingConfig, RolloutPolicy, GateConfig, RoundsConfig])
def test_every_setting_is_documented(model):
    missing = [k for k in model.model_fields if f"`{k}`" not in DOC and f"\n{k} =" not in DOC]
    assert not missing, f"{model.__name__} settings missing from docs/publishing.md: {missing}"


@pytest.mark.parametrize("module", [publish_cli, rollback_cli, keys_cli])
def test_every_cli_option_is_documented(module):
    parser = argparse.ArgumentParser()
    module.configure(parser)
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    for sub in parser._actions:
        if isinstance(sub, argparse._SubParsersAction):
            options += [o for p in sub.choices.values() for a in p._actions for o in a.option_strings
                        if o.startswith("--") and o != "--help"]
    missing = [o for o in options if o not in DOC]
    assert not missing, f"{module.__name__} options missing from docs/publishing.md: {missing}"
