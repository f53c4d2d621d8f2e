"""Probation always ends in a verdict, and the last good model stays on disk (issue 11, finding 1).

The attack: an agent on a healthy v3 installs v4, which outputs NaN; while v4
is still in its health window, v5 is announced (and fails). Before the fix the
announcement ended v4's probation without a verdict, pruned v3 from disk, and
v5's failure reverted to v4: the agent then ran NaN on every frame for good.

Real onnxruntime models, a real HTTP server, real files; the health window is
fed by hand (the inference loop's part) so every step is deterministic.
"""

from __future__ import annotations

import numpy as np

from agent.config import parse_config
from agent.health import HealthWindow
from agent.modelstore import ModelRef, ModelState, ModelStore
from agent.synthetic import SyntheticCamera
from agent.updater import ModelHolder, Updater
from agent_helpers import announcement, base_config, keys, make_classifier, make_faulty_classifier, site  # noqa: F401

MIN_FRAMES = 5


def _updater(tmp_path, pub, health: bool = True):
    broker = type("B", (), {"host": "127.0.0.1", "port": 1})()
    model = tmp_path / "v1.onnx"
    if not model.exists():
        make_classifier(model, version=1)
    raw = base_config(tmp_path, broker, model, updates={
        "enabled": True, "trusted_keys": [pub], "allow_http": True,
        "health": {"window_s": 0.0, "min_frames": MIN_FRAMES}})
    cfg = parse_config(raw, tmp_path)
    holder = ModelHolder()
    window = HealthWindow(cfg.updates.health) if health else None
    up = Updater(cfg, ModelStore(cfg.data_dir / "models"), holder, lambda: None, health=window)
    up.load_initial()
    return up, holder, window


def _run_frames(holder: ModelHolder, window: HealthWindow, n: int = MIN_FRAMES) -> None:
    """What the inference loop does: infer real frames on the running model and record each outcome."""
    cam = SyntheticCamera(7)
    for i in range(n):
        runner = holder.get()
        try:
            result = runner.infer(cam.frame(i).image)
        except Exception as e:  # noqa: BLE001 - NonFiniteOutput or an onnxruntime error: both are outcomes
            window.record(runner.version, "nonfinite" if "NaN" in str(e) else "error")
        else:
            window.record(runner.version, "ok", float(np.max(result.scores)))


def _versions_on_disk(up: Updater) -> list[int]:
    return sorted(int(p.name[1:]) for p in up.store.root.glob("v*") if p.name[1:].isdigit())


def _healthy_v3(tmp_path, root, url, key, pub):
    up, holder, window = _updater(tmp_path, pub)
    v3 = make_classifier(root / "v3.onnx", version=3, seed=3, embed_card=False)
    assert up.apply(announcement(v3, key, f"{url}/v3.onnx", 3))
    _run_frames(holder, window)
    up.check_health()
    assert (holder.ref.version, holder.model_state) == (3, "ok"), holder.detail
    assert up.store.load().good.version == 3
    return up, holder, window


def test_an_announcement_during_probation_waits_for_the_verdict(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    up, holder, window = _healthy_v3(tmp_path, root, url, key, pub)
    nan4 = make_faulty_classifier(root / "v4.onnx", "nan", version=4)
    assert up.apply(announcement(nan4, key, f"{url}/v4.onnx", 4))
    assert (holder.ref.version, window.probation) == (4, 4)

    # v5 arrives during v4's window: held, v4 stays on probation, v3 stays on disk
    nan5 = make_faulty_classifier(root / "v5.onnx", "nan", version=5, seed=5)
    assert not up.apply(announcement(nan5, key, f"{url}/v5.onnx", 5))
    assert (holder.ref.version, window.probation) == (4, 4)
    assert 3 in _versions_on_disk(up)

    # v4 meets real frames, gives NaN, and is judged: back to v3, v4 blocked; only then v5 installs
    _run_frames(holder, window, 1)
    up.check_health()
    state = up.store.load()
    assert 4 in state.blocked
    assert (holder.ref.version, window.probation) == (5, 5), holder.detail
    assert state.previous.version == 3 and state.good.version == 3
    assert 3 in _versions_on_disk(up)

    # v5 fails as well: the agent goes back to v3 (the last model that passed), never to v4
    _run_frames(holder, window, 1)
    up.check_health()
    assert (holder.ref.version, holder.model_state) == (3, "reverted"), holder.detail
    assert up.store.load().blocked == (4, 5)
    _run_frames(holder, window, 3)
    assert window.probation is None
    frame = SyntheticCamera(7).frame(0).image
    assert np.isfinite(holder.get().infer(frame).scores).all()

    # a restart runs v3 and ignores the retained v4 and v5 announcements
    up, holder, window = _updater(tmp_path, pub)
    assert (holder.ref.version, window.probation) == (3, None)
    assert not up.apply(announcement(nan4, key, f"{url}/v4.onnx", 4))
    assert not up.apply(announcement(nan5, key, f"{url}/v5.onnx", 5))
    assert holder.ref.version == 3
    # a rollback must not bring a blocked version back either
    assert not up.rollback() and holder.ref.version == 3 and "blocked" in holder.detail


def test_a_broken_announcement_during_probation_does_not_skip_the_verdict(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    up, holder, window = _healthy_v3(tmp_path, root, url, key, pub)
    nan4 = make_faulty_classifier(root / "v4.onnx", "nan", version=4)
    assert up.apply(announcement(nan4, key, f"{url}/v4.onnx", 4))
    (root / "v5.onnx").write_bytes(b"\x08\x07" + b"not an onnx model" * 10)
    assert not up.apply(announcement(root / "v5.onnx", key, f"{url}/v5.onnx", 5))
    assert window.probation == 4
    _run_frames(holder, window, 1)
    up.check_health()  # v4 failed -> v3; then v5 is tried and refused
    assert holder.ref.version == 3 and "refused model update v5 (bad_model)" in holder.detail
    assert holder.get() is not None and 4 in up.store.load().blocked and 3 in _versions_on_disk(up)


def test_the_last_good_model_is_never_pruned_while_newer_ones_are_unproven(tmp_path, keys, site):
    key, pub = keys
    root, url = site
    up, holder, window = _updater(tmp_path, pub)
    for v in (3, 4):
        make_classifier(root / f"v{v}.onnx", version=v, seed=v, embed_card=False)
    assert up.apply(announcement(root / "v3.onnx", key, f"{url}/v3.onnx", 3))
    _run_frames(holder, window)
    up.check_health()
    # a state written by an older agent, or by a rollback, where the good model is neither current nor previous
    store = up.store
    state = store.load()
    v2 = store.install(2, make_classifier(tmp_path / "v2.onnx", version=2, seed=2), {})
    store.save(ModelState(state.current, ModelRef(2, str(v2)), state.blocked, {}, state.good))
    up, holder, window = _updater(tmp_path, pub)
    assert up.apply(announcement(root / "v4.onnx", key, f"{url}/v4.onnx", 4))
    assert _versions_on_disk(up) == [3, 4] and up.store.load().good.version == 3
    # without a health window a model is trusted once it loads: it becomes the good one at once
    up, holder, _ = _updater(tmp_path, pub, health=False)
    make_classifier(root / "v6.onnx", version=6, seed=6, embed_card=False)
    assert up.apply(announcement(root / "v6.onnx", key, f"{url}/v6.onnx", 6))
    assert up.store.load().good.version == 6 and _versions_on_disk(up) == [4, 6]
