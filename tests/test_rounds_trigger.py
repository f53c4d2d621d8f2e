"""The round trigger is a pure decision over the corrected count and the batch size."""

from __future__ import annotations

import pytest

from trainer.rounds.trigger import check_batch_size, decide


def test_starts_exactly_at_the_batch_size():
    assert not decide(39, 40).start
    d = decide(40, 40)
    assert d.start and "40 corrected examples reached the batch of 40" in d.reason
    assert decide(75, 40).start


def test_default_batch_is_40():
    assert not decide(39).start and decide(40).start


def test_never_while_a_round_runs():
    d = decide(100, 30, running=True)
    assert not d.start and "count towards the next" in d.reason


@pytest.mark.parametrize("size", [29, 51, 0, -1, 40.0, True, "40"])
def test_batch_size_outside_30_50_is_refused(size):
    with pytest.raises(ValueError, match="30 to 50"):
        decide(100, size)


@pytest.mark.parametrize("size", [30, 45, 50])
def test_allowed_batch_sizes(size):
    assert check_batch_size(size) == size
    assert decide(size, size).start and not decide(size - 1, size).start


def test_negative_count_is_a_bug():
    with pytest.raises(ValueError):
        decide(-1, 40)


def test_rounds_config_validates_the_training_config_at_start_up(tmp_path):
    from pydantic import ValidationError

    from trainer.rounds.pipeline import RoundsConfig

    assert RoundsConfig(work_dir=tmp_path, train={"epochs": 3}).train == {"epochs": 3}
    with pytest.raises(ValidationError, match="epohcs"):
        RoundsConfig(work_dir=tmp_path, train={"epohcs": 3})
    with pytest.raises(ValidationError, match="batch_sise"):
        RoundsConfig(work_dir=tmp_path, batch_sise=40)


# -- what the trigger counts, on a real store -------------------------------------------------------------

def _store_with_reviews(tmp_path, detection: bool):
    import factories

    from trainer.store import Store, incoming

    store = Store(tmp_path / "data")
    make = factories.detection_sample if detection else factories.sample
    store.configure_project(task=make().task, labels=make().labels)  # [project] labels: agents never define them
    store.ingest_samples([incoming(make(frame_id=f"cam-agent-1.gate.{i:06d}", jpeg=factories.jpeg(seed=i)))
                          for i in range(6)])
    ids = [it.id for it in store.queue(limit=10)[0]]
    return store, ids


def test_classification_corrections_are_labels_other_than_the_prediction(tmp_path):
    from trainer.rounds.trigger import count_new_labels

    store, ids = _store_with_reviews(tmp_path, detection=False)
    try:
        # the factory's sample predicts "circle" (scores 0.4, 0.35, 0.25)
        store.label(ids[0], "ann", "accept")                    # the model was right: not a correction
        store.label(ids[1], "ann", "label", label="circle")     # same answer typed by hand: not one either
        store.label(ids[2], "ann", "label", label="square")     # a correction
        store.label(ids[3], "ann", "label", label="triangle")   # a correction
        store.label(ids[4], "ann", "skip")                      # not labelled at all
        assert count_new_labels(store, "labels") == 4 == store.corrected_since_last_round()
        assert count_new_labels(store, "corrections") == 2
        store.undo("ann")  # the skip
        store.undo("ann")  # the triangle
        assert count_new_labels(store, "corrections") == 1
    finally:
        store.close()


def test_detection_corrections_are_box_edits(tmp_path):
    from trainer.rounds.trigger import count_new_labels

    store, ids = _store_with_reviews(tmp_path, detection=True)
    try:
        predicted = [{"x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.4, "label": "car"},
                     {"x1": 0.5, "y1": 0.5, "x2": 0.9, "y2": 0.95, "label": "person"}]
        store.label(ids[0], "ann", "accept")
        store.label(ids[1], "ann", "label", boxes=list(reversed(predicted)))        # same boxes: no edit
        store.label(ids[2], "ann", "label", boxes=predicted[:1])                    # one removed
        store.label(ids[3], "ann", "label", boxes=[dict(predicted[0], x2=0.35), predicted[1]])  # one moved
        store.label(ids[4], "ann", "label", boxes=[predicted[0], dict(predicted[1], label="car")])  # relabelled
        store.label(ids[5], "ann", "label", boxes=predicted + [{"x1": 0.0, "y1": 0.0, "x2": 0.1, "y2": 0.1,
                                                                 "label": "car"}])  # one added
        assert count_new_labels(store, "labels") == 6
        assert count_new_labels(store, "corrections") == 4
    finally:
        store.close()


def test_the_round_manager_triggers_on_what_it_is_configured_to_count(tmp_path):
    from trainer.publish.registry import Registry
    from trainer.rounds.pipeline import RoundManager, RoundsConfig

    store, ids = _store_with_reviews(tmp_path, detection=False)
    store.configure_project(batch_size=30)
    registry = Registry(tmp_path / "data")
    managers = {count: RoundManager(store, registry, RoundsConfig(work_dir=tmp_path / "rounds", auto_start=False,
                                                                  trigger_count=count))
                for count in ("labels", "corrections")}
    try:
        for i in ids[:3]:
            store.label(i, "ann", "label", label="square")
        store.label(ids[3], "ann", "accept")
        state = managers["corrections"].trigger_state()
        assert state["count"] == "corrections" and state["counted"] == 3 and state["batch_size"] == 30
        assert managers["labels"].trigger_state()["counted"] == 4
        d = managers["corrections"].check_trigger()
        assert not d.start and d.reason == "3 of 30 corrections"
        assert managers["labels"].progress()["trigger"]["counted"] == 4  # what the models page shows
    finally:
        for m in managers.values():
            m.close()
        store.close()
