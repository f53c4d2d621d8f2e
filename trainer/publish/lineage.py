"""Lineage of one example: where it came from (the store) and which models used it (the registry)."""

from __future__ import annotations

from .registry import Registry

PROVENANCE = ("source", "agent_id", "camera_id", "frame_id", "model_name", "model_version", "strategy", "reason",
              "uncertainty", "captured_at", "labeled_by", "labeled_at", "label", "split", "status", "round_added")


def example_lineage(example_id: int | str, registry: Registry, store=None) -> dict:
    """``{"example_id", "provenance": {...} | None, "models": [{"name", "version", "split"}]}``.

    ``store`` is a ``trainer.store.Store`` (or None when only the registry is at hand); an
    example the store does not know has ``provenance`` None.
    """
    provenance = None
    if store is not None:
        from trainer.store import NotFound

        text = str(example_id)
        item = None
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if text.isascii() and text.isdigit() and len(text) <= 18:  # store ids are SQLite integers
            try:
                item = store.item(int(text))
            except NotFound:
                item = None
        if item is not None:
            provenance = {k: getattr(item, k) for k in PROVENANCE}
    models = [{"name": n, "version": v, "split": s} for n, v, s in registry.models_using(example_id)]
    return {"example_id": str(example_id), "provenance": provenance, "models": models}
