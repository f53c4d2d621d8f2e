"""Synthetic example generators: a plug-in interface and a registry.

A generator renders images with known labels (and boxes) into a folder and
returns the ``Example`` records, so synthetic data enters the dataset like any
import. Register your own under the ``edgeloop.generators`` entry-point group
(the object is a factory taking keyword parameters) or name it by
``module:function`` path.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from trainer.dataset import Example

ENTRY_POINT_GROUP = "edgeloop.generators"


@runtime_checkable
class Generator(Protocol):
    name: str
    task: str  # "classification" or "detection"

    def generate(self, n: int, rng: np.random.Generator, out_dir: Path) -> list[Example]:
        """Write ``n`` images under ``out_dir`` and return their examples."""
        ...


def _builtin() -> dict[str, Callable[..., Generator]]:
    from trainer.synthetic.shapes import ShapesGenerator

    return {"shapes": ShapesGenerator}


def available_generators() -> list[str]:
    names = set(_builtin())
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_generator(name: str, **params: Any) -> Generator:
    """A generator by built-in name, entry-point name or ``module:function`` path."""
    factory = _builtin().get(name)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None and ":" in name:
        module, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    if factory is None:
        raise KeyError(f"unknown generator {name!r}; available: {', '.join(available_generators())}")
    gen = factory(**params)
    if not isinstance(gen, Generator):
        raise TypeError(f"{name!r} did not build a Generator (needs name, task and generate(n, rng, out_dir))")
    return gen
