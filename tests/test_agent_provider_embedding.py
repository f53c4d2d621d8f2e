"""The execution provider actually used, and model embeddings, from the runner to Status, telemetry and samples."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from agent.model import PROVIDERS, ModelError, load_runner
from agent_helpers import Collector, base_config, classifier_card, make_constant_model, running, write_config
from mqtt_util import wait_until
from protocol import decode, encode, topic_for
from protocol.embedding import dequantize_embedding, quantize_embedding

FEAT = np.array([3.0, -4.0, 0.0, 12.0, 0.5, -0.5, 1.0, 2.0], np.float32)
LOGITS = np.array([[1.0, 0.8, 0.2]], np.float32)  # top-1 0.44: least_confidence picks every frame


def embedding_model(tmp_path, feat_shape=(1, 8, 1, 1), embedding_output: str | None = "feat"):
    card = {**classifier_card(), "embedding_output": embedding_output} if embedding_output else classifier_card()
    return make_constant_model(tmp_path / "emb.onnx", {"logits": LOGITS, "feat": FEAT.reshape(feat_shape)},
                               card=card)


def missing_providers() -> list[str]:
    return [p for p in ("tensorrt", "cuda") if PROVIDERS[p] not in ort.get_available_providers()]


@pytest.mark.parametrize("shape", [(1, 8), (1, 8, 1, 1)])
def test_runner_returns_the_normalized_embedding(tmp_path, shape):
    runner = load_runner(embedding_model(tmp_path, shape))
    pred = runner.predict(np.full((40, 50, 3), 90, np.uint8))
    assert pred.embedding.dtype == np.float32 and pred.embedding.shape == (8,)
    assert np.allclose(pred.embedding, FEAT / np.linalg.norm(FEAT), atol=1e-6)
    assert pred.scores.shape == (3,)


def test_models_without_embedding_still_work(tmp_path):
    pred = load_runner(embedding_model(tmp_path, embedding_output=None)).predict(np.zeros((8, 8, 3), np.uint8))
    assert pred.embedding is None and pred.scores.shape == (3,)


def test_bad_embedding_outputs_fail_at_load(tmp_path):
    model = embedding_model(tmp_path, embedding_output=None)
    card = tmp_path / "c.json"
    card.write_text(json.dumps({**classifier_card(), "embedding_output": "pooled"}))
    with pytest.raises(ModelError, match="has no embedding output pooled"):
        load_runner(model, card=card)
    bad = make_constant_model(tmp_path / "bad.onnx", {"logits": LOGITS, "feat": np.zeros((1, 8, 2, 2))},
                              card={**classifier_card(), "embedding_output": "feat"})
    with pytest.raises(ModelError, match=r"embedding output feat has shape \[1, 8, 2, 2\], expected \[1, D\]"):
        load_runner(bad)


def test_missing_provider_is_a_warning_never_a_silent_cpu_run(tmp_path, caplog):
    missing = missing_providers()
    if not missing:
        pytest.skip("this onnxruntime has every provider")
    with caplog.at_level("WARNING", logger="agent.model"):
        runner = load_runner(embedding_model(tmp_path), providers=[missing[0], "cpu"])
    assert runner.provider == "cpu"
    assert f"requested execution provider {missing[0]} not available" in runner.provider_warning
    assert "running on cpu" in runner.provider_warning
    assert any(runner.provider_warning in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    quiet = load_runner(embedding_model(tmp_path), providers=["cpu"])
    assert (quiet.provider, quiet.provider_warning) == ("cpu", "")


def test_agent_reports_provider_and_sends_embeddings(broker, tmp_path):
    missing = missing_providers()
    wanted = missing[:1] + ["cpu"]
    cfg = base_config(tmp_path, broker, embedding_model(tmp_path),
                      model={"providers": wanted},
                      cameras=[{"id": "cam1", "source": "synthetic",
                                "synthetic": {"seed": 2, "width": 64, "height": 48, "frames": 12}}])
    collector = Collector(broker.host, broker.port)
    try:
        with running(write_config(tmp_path / "a.toml", cfg)) as agent:
            assert wait_until(lambda: agent.sources_done() and agent.outbox.stats().pending == 0, 30)
            telemetry = agent.telemetry()
            assert wait_until(lambda: collector.last_status() is not None, 10)
            status = collector.last_status()
        assert decode(topic_for(telemetry), encode(telemetry)).provider == "cpu"
        assert status.provider == "cpu" and status.software_version
        if missing:
            assert f"warning: requested execution provider {missing[0]} not available" in status.detail
        assert wait_until(lambda: len(collector.ids()) > 0, 10)
        for sample in collector.received:
            assert sample.embedding == quantize_embedding(FEAT)
            assert float(dequantize_embedding(sample.embedding) @ (FEAT / np.linalg.norm(FEAT))) > 0.999
    finally:
        collector.close()
