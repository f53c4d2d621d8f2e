"""The teacher on the server: real ONNX models through the agent's runner, a real store, real HTTP.

The detector teacher is agent_helpers.make_detector: one box per cell of a 4x4 grid whose score rises
with the cell's brightness, so a frame with one white cell has exactly one known box.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from agent_helpers import LABELS, make_classifier, make_detector, make_faulty_classifier
from factories import detection_sample, sample
from test_ui_review import TOKEN, running_server
from edgeloop.cli import main as edgeloop_main
from trainer.assist import AssistConfig
from trainer.assist.prelabels import accept, accept_all
from trainer.assist.teacher import Teacher, TeacherError, label_mapping, map_boxes
from trainer.assist.worker import Assist
from trainer.server.cli import main as server_main
from trainer.store import Store, incoming, new_example

pytestmark = pytest.mark.timeout(120)
H = {"Authorization": f"Bearer {TOKEN}", "X-User": "alice"}
PROJECT = ("vehicle", "person")


def frame(cells: list[tuple[int, int]], size: int = 128, ext: str = ".jpg") -> bytes:
    """Black frame with white grid cells (row, col) of the 4x4 grid."""
    img = np.zeros((size, size, 3), np.uint8)
    k = size // 4
    for r, c in cells:
        img[r * k:(r + 1) * k, c * k:(c + 1) * k] = 255
    ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
    assert ok
    return buf.tobytes()


def ingest_detections(store: Store, frames: dict[str, bytes], first: int = 1) -> dict[str, int]:
    samples = [detection_sample(frame_id=f"cam-agent-1.gate.{i:06d}", labels=PROJECT, jpeg=data, width=128,
                                height=128) for i, data in enumerate(frames.values(), first)]
    store.ingest_samples([incoming(s) for s in samples])
    ids = dict(store.db.read().execute("SELECT frame_id, example_id FROM samples").fetchall())
    return {name: ids[s.frame_id] for name, s in zip(frames, samples)}


def wait_for(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout} s: {fn}")


def prelabel_rows(store: Store) -> list[tuple]:
    return store.db.read().execute("SELECT example_id, state FROM prelabels ORDER BY example_id").fetchall()


def assist_cfg(model: Path, **kw) -> dict:
    return {"model": str(model), "poll_s": 0.1, **kw}


# ------------------------------------------------------------ pure parts -----
def test_mapped_boxes_merge_and_drop_unmapped_labels() -> None:
    labels = ("car", "truck", "person", "dog")
    boxes = np.array([[0.1, 0.1, 0.4, 0.4], [0.11, 0.1, 0.4, 0.41], [0.6, 0.6, 0.9, 0.9], [0.5, 0.5, 0.7, 0.7],
                      [0.0, 0.0, 0.2, 0.2]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.2], np.float32)
    idx = np.array([0, 1, 1, 3, 0])
    p = map_boxes(labels, boxes, scores, idx, {"car": "vehicle", "truck": "vehicle"}, 0.3, 0.5)
    # car and truck on one object are one vehicle; the dog maps to nothing; 0.2 is under min_score
    assert [(b["label"], b["score"]) for b in p.boxes] == [("vehicle", pytest.approx(0.9)),
                                                           ("vehicle", pytest.approx(0.7))]
    assert p.score == pytest.approx(0.9) and p.label is None


def test_label_map_errors_name_the_label() -> None:
    with pytest.raises(TeacherError, match="'lorry'"):
        label_mapping(("car", "truck"), {"lorry": "vehicle"}, PROJECT, "coco")
    with pytest.raises(TeacherError, match="'vehicles'.*not labels of the project"):
        label_mapping(("car",), {"car": "vehicles"}, PROJECT, "coco")
    with pytest.raises(TeacherError, match="set assist.label_map"):
        label_mapping(("car",), {}, PROJECT, "coco")
    assert label_mapping(("person", "car"), {"car": "vehicle"}, PROJECT, "coco") == {"person": "person",
                                                                                       "car": "vehicle"}


# ------------------------------------------------- detection, over HTTP -----
def test_teacher_prelabels_edge_samples_and_imports_over_http(tmp_path: Path) -> None:
    model = make_detector(tmp_path / "blobs.onnx")
    data = tmp_path / "data"
    with Store(data) as store:
        store.configure_project(task="detection", labels=PROJECT)
        ids = ingest_detections(store, {"one": frame([(1, 2)]), "none": frame([]), "two": frame([(0, 0), (3, 3)])})
        store.add_examples([new_example(frame([(2, 1)], ext=".png"), source="import", status="pending_review",
                                        origin="unlabelled:a.png")], task="detection")
        imported = store.db.read().execute("SELECT id FROM examples WHERE source = 'import'").fetchone()[0]
    assist = assist_cfg(model, label_map={"blob": "vehicle"}, min_score=0.5)
    with running_server(data, "detection", PROJECT, assist=assist) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=10) as c:
        st = wait_for(lambda: (r := c.get("/api/assist").json())["counts"]["waiting"] == 0 and
                      r["counts"]["done"] == 4 and r)
        assert st["state"] == "ready" and st["teacher"]["name"] == "blobs" and st["counts"]["failed"] == 0
        assert st["teacher"]["mapping"] == {"blob": "vehicle"}

        one = c.get(f"/api/items/{ids['one']}").json()["prelabel"]
        assert (one["source"], one["model_name"], one["model_version"], one["state"]) == ("teacher", "blobs", 1, "done")
        [box] = one["boxes"]
        assert [box[k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx([0.5, 0.25, 0.75, 0.5], abs=1e-4)
        assert box["label"] == "vehicle" and box["score"] > 0.99 and one["score"] == box["score"]
        assert c.get(f"/api/items/{ids['none']}").json()["prelabel"]["boxes"] == []
        two = c.get(f"/api/items/{ids['two']}").json()["prelabel"]["boxes"]
        assert sorted((round(b["x1"], 2), round(b["y1"], 2)) for b in two) == [(0.0, 0.0), (0.75, 0.75)]

        # the unlabelled import is in the review queue with its pre-label
        queue = c.get("/api/queue").json()
        assert queue["total"] == 4
        imp = next(i for i in queue["items"] if i["id"] == imported)
        assert imp["source"] == "import" and imp["agent_id"] is None
        assert [round(imp["prelabel"]["boxes"][0][k], 3) for k in ("x1", "y1")] == [0.25, 0.5]

        # a pre-label is never a label until accepted
        assert c.get(f"/api/items/{ids['one']}").json()["status"] == "pending_review"
        r = c.post(f"/api/items/{ids['one']}/accept-prelabel")
        assert r.status_code == 200, r.text
        item = r.json()["item"]
        assert item["status"] == "labeled" and item["labeled_by"] == "alice"
        assert [item["boxes"][0][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx([0.5, 0.25, 0.75, 0.5],
                                                                                        abs=1e-4)
        assert [e["action"] for e in store.label_history(ids["one"])] == ["accept_prelabel"]
        assert c.post("/api/undo").json() == {"item_id": ids["one"]}  # undo works as for any label
        assert c.get(f"/api/items/{ids['one']}").json()["status"] == "pending_review"
        assert c.post("/api/items/999999/accept-prelabel").status_code == 404
        assert store.counters()["assist_done"] == 4

    # restart: nothing is pre-labelled twice, and a new sample is
    with running_server(data, "detection", PROJECT, assist=assist) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=10) as c:
        new = ingest_detections(store, {"late": frame([(3, 0)])}, first=100)
        wait_for(lambda: c.get("/api/assist").json()["counts"]["done"] == 5)
        assert [r[0] for r in prelabel_rows(store)] == sorted([*ids.values(), imported, new["late"]])
        assert store.counters()["assist_done"] == 5


# ------------------------------------------------------------ bad teachers -----
def test_teacher_that_does_not_load_leaves_the_server_running(tmp_path: Path) -> None:
    bad = tmp_path / "teacher.onnx"
    bad.write_text("this is not an onnx file")
    with running_server(tmp_path / "data", "detection", PROJECT, assist=assist_cfg(bad)) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=10) as c:
        st = c.get("/api/assist").json()
        assert st["state"] == "failed" and "teacher.onnx is not a loadable ONNX model" in st["error"]
        assert st["teacher"] is None
        assert c.get("/api/queue").status_code == 200 and c.get("/healthz").json()["ok"] is True
        r = c.post("/api/assist/run", json={})
        assert r.status_code == 409 and "not loaded" in r.json()["detail"]


def test_card_that_does_not_fit_and_a_bad_map_are_load_errors(tmp_path: Path) -> None:
    model = make_detector(tmp_path / "blobs.onnx")
    card = tmp_path / "wrong.card.toml"
    card.write_text('name = "blobs"\nversion = 1\ntask = "detection"\nlabels = ["blob"]\n'
                    '[input]\nwidth = 64\nheight = 64\n[output]\ntype = "ssd"\n')
    with Store(tmp_path / "data") as store:
        store.configure_project(task="detection", labels=PROJECT)
        a = Assist(store, AssistConfig(model=model, card=card, label_map={"blob": "vehicle"})).start()
        assert a.state == "failed" and "the card says [1, 3, 64, 64]" in a.error
        a = Assist(store, AssistConfig(model=model, label_map={"blobs": "vehicle"})).start()
        assert a.state == "failed" and "'blobs'" in a.error and "not labels of teacher blobs" in a.error
        a = Assist(store, AssistConfig(model=tmp_path / "absent.onnx")).start()
        assert a.state == "failed" and "absent.onnx is not a file" in a.error
        with pytest.raises(TeacherError, match="not loaded"):
            a.request_run()
        cls = make_classifier(tmp_path / "cls.onnx")
        a = Assist(store, AssistConfig(model=cls)).start()
        assert a.state == "failed" and "classification model; the project is detection" in a.error
        assert Assist(store, AssistConfig(model=model, enabled=False)).start().state == "disabled"


def test_check_config_loads_the_teacher(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "teacher.onnx"
    bad.write_text("not onnx")
    cfg = tmp_path / "server.toml"
    cfg.write_text(f'[project]\ntask = "detection"\nlabels = ["vehicle"]\n[assist]\nmodel = "{bad}"\n')
    assert server_main(["--check-config", str(cfg)]) == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err
    cfg.write_text(f'[project]\ntask = "detection"\nlabels = ["vehicle"]\n[assist]\n'
                   f'model = "{make_detector(tmp_path / "b.onnx")}"\nlabel_map = {{ blob = "vehicle" }}\n')
    assert server_main(["--check-config", str(cfg)]) == 0


@pytest.mark.parametrize("fault, error", [("nan", "NonFiniteOutput: nan.onnx"), ("error", "out of data bounds")])
def test_teacher_failing_at_run_time_is_a_counted_rejection(tmp_path: Path, fault: str, error: str) -> None:
    model = make_faulty_classifier(tmp_path / f"{fault}.onnx", fault)
    data = tmp_path / "data"
    with Store(data) as store:
        store.ingest_samples([incoming(sample(frame_id=f"cam-agent-1.gate.{i:06d}")) for i in range(3)])
    with running_server(data, "classification", LABELS, assist=assist_cfg(model)) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=10) as c:
        st = wait_for(lambda: (r := c.get("/api/assist").json())["counts"]["failed"] == 3 and r)
        assert st["state"] == "ready" and st["counts"]["done"] == 0 and st["counts"]["waiting"] == 0
        item = c.get("/api/queue").json()["items"][0]
        assert item["prelabel"]["state"] == "failed" and error in item["prelabel"]["error"], item["prelabel"]
        r = c.post(f"/api/items/{item['id']}/accept-prelabel")
        assert r.status_code == 422 and "no pre-label" in r.json()["detail"]
        assert store.counters()["assist_failed"] == 3
        # failures are not retried by themselves; on request they are
        assert c.post("/api/assist/run").json() == {"waiting": 0}  # no body: the defaults
        for bad in ({"retry_failed": "please"}, {"bogus": True}, [1]):
            assert c.post("/api/assist/run", json=bad).status_code == 422, bad
        assert c.post("/api/assist/run", json={"retry_failed": True}).json()["waiting"] == 3
        wait_for(lambda: store.counters()["assist_failed"] == 6)
        assert c.get("/healthz").status_code == 200


# ------------------------------------------- classification, on request -----
def test_classifier_teacher_on_request_sums_mapped_classes(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "cls.onnx", scale=2.0)
    project = ("round", "angular")
    with Store(tmp_path / "data") as store:
        store.configure_project(task="classification", labels=project)
        store.ingest_samples([incoming(sample(frame_id=f"cam-agent-1.gate.{i:06d}", labels=project,
                                              scores=(0.5, 0.5), jpeg=frame([(i % 4, i // 4)])))
                              for i in range(6)])
        cfg = AssistConfig(model=model, auto=False, poll_s=0.05, min_score=0.0,
                           label_map={"circle": "round", "square": "angular", "triangle": "angular"})
        a = Assist(store, cfg).start()
        try:
            assert a.state == "ready"
            a._wake.set()
            time.sleep(0.3)  # several scan periods: with auto off, nothing is pre-labelled unasked
            assert prelabel_rows(store) == []
            assert a.request_run() == 6
            assert a.wait_idle(30)
            assert [r[1] for r in prelabel_rows(store)] == ["done"] * 6
            teacher = Teacher.load(cfg, "classification", project)
            for ex in store.queue()[0]:
                data, _ = store.image(ex.id)
                probs = teacher.runner.infer(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)).scores
                want = {"round": probs[0], "angular": probs[1] + probs[2]}
                assert ex.prelabel["scores"] == pytest.approx(want, abs=1e-5)
                assert ex.prelabel["label"] == max(want, key=want.get)
            accepted = store.queue()[0][0]
            accept(store, accepted.id, "bot")
            assert store.item(accepted.id).label == accepted.prelabel["label"]
            # force: everything unlabelled is done again (with the same teacher key)
            assert a.request_run(force=True) == 5
            assert a.wait_idle(30) and store.counters()["assist_done"] == 11
            # --auto-label: every pending item takes its pre-label
            assert accept_all(store, "auto", teacher=a.teacher.key) == 5
            assert store.count("pending_review") == 0 and store.count("labeled") == 6
        finally:
            a.stop()


# ------------------------------------------------- unlabelled images in -----
def unlabelled_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(frame([(1, 2)]))
    (folder / "sub" / "b.png").write_bytes(frame([(0, 0)], ext=".png"))
    (folder / "c.bmp").write_bytes(frame([], ext=".bmp"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(frame([])[:200])
    return folder


def test_unlabelled_import_and_offline_run_from_the_cli(tmp_path: Path, capsys) -> None:
    photos = unlabelled_folder(tmp_path / "photos")
    data = tmp_path / "data"
    cfg = tmp_path / "server.toml"
    cfg.write_text(f'[store]\ndata_dir = "{data}"\n[project]\ntask = "detection"\nlabels = ["vehicle"]\n'
                   f'[assist]\nmodel = "{make_detector(tmp_path / "b.onnx")}"\nlabel_map = {{ blob = "vehicle" }}\n'
                   'min_score = 0.5\nauto = false\n')
    with Store(data) as store:
        store.configure_project(task="detection", labels=("vehicle",))
    assert edgeloop_main(["assist", "import", str(photos), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "4 read, 2 skipped" in out and "3 new unlabelled items" in out
    assert "notes.txt: not an image file name" in out and "broken.jpg: corrupt image" in out
    assert edgeloop_main(["assist", "import", str(photos), "--config", str(cfg)]) == 0
    assert "0 new unlabelled items" in capsys.readouterr().out  # re-importing adds nothing

    assert edgeloop_main(["assist", "run", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "teacher blobs v1: 3 items to pre-label" in out and '"done": 3' in out and '"waiting": 0' in out
    with Store(data) as store:
        origin = dict(store.db.read().execute("SELECT id, origin FROM examples").fetchall())
        items = {origin[i.id]: i for i in store.queue()[0]}
        assert set(items) == {"images:a.jpg", "images:sub/b.png", "images:c.bmp"}
        assert all(i.source == "import" and i.status == "pending_review" for i in items.values())
        assert [b["label"] for b in items["images:a.jpg"].prelabel["boxes"]] == ["vehicle"]
        assert items["images:c.bmp"].prelabel["boxes"] == [] and items["images:c.bmp"].media_type == "image/png"
    assert edgeloop_main(["assist", "run", "--config", str(cfg)]) == 0  # idempotent: nothing left to do
    assert "0 items to pre-label" in capsys.readouterr().out


def test_unlabelled_import_over_http_stays_under_import_root(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    unlabelled_folder(root / "photos")
    (root / "file.jpg").write_bytes(frame([]))
    with running_server(tmp_path / "data", "detection", PROJECT, import_root=str(root)) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=10) as c:
        r = c.post("/api/import/unlabelled", json={"path": "photos"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["read"], body["added"], len(body["skipped"])) == (4, 3, 2)
        assert c.get("/api/queue").json()["total"] == 3
        assert c.post("/api/import/unlabelled", json={"path": "../"}).status_code == 403
        assert c.post("/api/import/unlabelled", json={"path": "absent"}).status_code == 404
        assert c.post("/api/import/unlabelled", json={"path": "file.jpg"}).status_code == 422
        assert c.get("/api/assist").status_code == 404  # no [assist]: the teacher routes say so
