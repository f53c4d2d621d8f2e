"""trainer/server/README.md documents every config key and every API route (docs kept honest)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from trainer.server.app import create_app
from trainer.server.config import ServerConfig

README = (Path(__file__).resolve().parents[1] / "trainer" / "server" / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _keys(field.annotation, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_config_key_is_documented() -> None:
    keys = _keys(ServerConfig)
    assert len(keys) > 25
    assert [k for k in keys if f"`{k}`" not in README] == []


def test_every_route_is_documented(tmp_path) -> None:
    # A data dir of its own: the app makes its MQTT client id file there, not in the checkout.
    config = ServerConfig(store={"data_dir": str(tmp_path)})
    schema = create_app(config, token="docs-token-0123456789").openapi()
    missing = [f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops
               if f"| {m.upper()} | `{p}` |" not in README]
    assert missing == []
