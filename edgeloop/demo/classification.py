"""The classification demo: drifting synthetic shape cameras, an oracle that knows the true labels.

``ClassificationTask`` is what ``Demo`` asks about everything that depends on
the task: the server's and agents' configs, the first model's data, the
labeller, and the per-model figure beside the test-split metric (accuracy on
the fully drifted stream). No threads of its own; the oracle runs one.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from .configs import agent_config_text, server_config
from .layout import CAMERA_H, CAMERA_W, LABELS, MAX_SHAPES, MODEL_NAME, DemoConfig, Layout
from .oracle import Oracle


class DemoError(RuntimeError):
    pass


def initial_examples(n: int, seed: int) -> list:
    """Frames of a drift-0 synthetic camera with their true labels: the first model's data."""
    from agent.synthetic import SyntheticCamera
    from trainer.store import new_example

    camera = SyntheticCamera(seed * 7919 + 17, CAMERA_W, CAMERA_H, 0.0, hold=1, max_shapes=MAX_SHAPES)
    out = []
    for i in range(n):
        frame = camera.frame(i)
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise DemoError("could not encode a synthetic frame")
        out.append(new_example(buf.tobytes(), label=frame.label, source="synthetic", origin=f"demo-seed:{seed}:{i}",
                               labeled_by="synthetic"))
    return out


def stream_accuracy(model_path: str, seed: int, n: int = 150) -> float:
    """Top-1 accuracy of a model on frames of the fully drifted stream, run as an agent runs it."""
    from agent.model import ModelRunner
    from agent.synthetic import SyntheticCamera

    runner = ModelRunner.load(Path(model_path), ["cpu"])
    camera = SyntheticCamera(seed * 104729 + 5, CAMERA_W, CAMERA_H, 1.0, hold=1, max_shapes=MAX_SHAPES)
    right = 0
    for i in range(1, n + 1):  # frame 0 is undrifted
        frame = camera.frame(i)
        pred = runner.infer(frame.image)
        right += pred.labels[int(pred.scores.argmax())] == frame.label
    return right / n


class ClassificationTask:
    task = "classification"
    model_name = MODEL_NAME
    labels = LABELS

    def __init__(self, cfg: DemoConfig, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout

    def check(self) -> None:
        """Nothing to check: the synthetic cameras need no files."""

    def server_config(self, broker_port: int, http_port: int):
        return server_config(self.cfg, self.layout, broker_port, http_port)

    def agent_config(self, i: int, broker_port: int, model_path: Path) -> str:
        return agent_config_text(self.cfg, self.layout, i, broker_port, model_path)

    def seed_dataset(self, demo) -> str:
        added = demo.service.store.add_examples(initial_examples(self.cfg.initial_examples or 150, self.cfg.seed),
                                                task="classification", labels=LABELS)
        return f"{added} synthetic examples"

    def start_labeller(self, url: str, token: str):
        if self.cfg.source:
            print("--source: the oracle cannot know the true labels of a real camera; label in the browser",
                  flush=True)
            return None
        return Oracle(url, token, self.cfg.seed).start()

    def stream_figures(self, model_path: str) -> dict:
        """Beside the test-split metric: accuracy on the drifted stream (synthetic cameras only)."""
        if self.cfg.source:
            return {}
        return {"stream_accuracy": round(stream_accuracy(model_path, self.cfg.seed), 3)}

    def final_figures(self, demo, summary: dict) -> dict:
        return {}
