"""Queries and writes behind the review workflow: queue, label, undo, stats, fleet.

Portable SQL (``trainer.store.sql``): the queue's expected value is computed
here in Python (``ranking.expected_value``) for both backends, and JSON
arrays are read through the dialect.
"""

from __future__ import annotations

import json
from dataclasses import replace

from . import ranking
from .records import Conflict, InvalidLabel, Item, NotFound, Project, QueueFilter
from .sql import Conn

ITEM_SQL = (
    "SELECT e.id, e.blob, e.media_type, e.width, e.height, e.label, e.boxes, e.status, e.split, e.source,"
    " e.labeled_by, e.labeled_at, e.round_added, s.prediction, s.predicted_label, s.uncertainty, s.strategy,"
    " s.reason, s.frame_id, s.agent_id, s.camera_id, s.model_name, s.model_version, s.captured_at, s.task"
    " FROM examples e LEFT JOIN samples s ON s.example_id = e.id")
PRELABEL_SQL = ("SELECT p.example_id, p.teacher, p.model_name, p.model_version, p.state, p.label, p.score, p.scores,"
                " p.boxes, p.error, p.created_at FROM prelabels p WHERE p.id IN (SELECT max(id) FROM prelabels"
                " WHERE example_id IN ({marks}) GROUP BY example_id)")
STATE_KEYS = ("label", "boxes", "status", "labeled_by", "labeled_at", "round_added")
MIN_PER_CLASS, GOOD, PRODUCTION = 10, 300, 1000


def _item(r: tuple, prelabel: dict | None) -> Item:
    pred = json.loads(r[13]) if r[13] else {"scores": {}, "boxes": []}
    return Item(*r[:6], json.loads(r[6]), *r[7:13], pred, *r[14:25], prelabel)


def _prelabels(db: Conn, ids: list[int]) -> dict[int, dict]:
    """The newest teacher pre-label of each example in ``ids``."""
    if not ids:
        return {}
    out = {}
    for r in db.execute(PRELABEL_SQL.format(marks=",".join("?" * len(ids))), ids).fetchall():
        out[r[0]] = {"source": "teacher", "teacher": r[1], "model_name": r[2], "model_version": r[3],
                     "state": r[4], "label": r[5], "score": r[6], "scores": json.loads(r[7]),
                     "boxes": json.loads(r[8]), "error": r[9], "created_at": r[10]}
    return out


def _items(db: Conn, rows: list[tuple]) -> list[Item]:
    pre = _prelabels(db, [r[0] for r in rows])
    return [_item(r, pre.get(r[0])) for r in rows]


def item(db: Conn, example_id: int) -> Item:
    row = db.execute(ITEM_SQL + " WHERE e.id = ?", [example_id]).fetchone()
    if row is None:
        raise NotFound(f"no example {example_id}")
    return _items(db, [row])[0]


def class_counts(db: Conn) -> dict[str, int]:
    """Labelled examples per class (images for classification, objects for detection)."""
    counts: dict[str, int] = {}
    for label, n in db.execute("SELECT label, count(*) FROM examples WHERE status = 'labeled'"
                               " AND label IS NOT NULL GROUP BY label"):
        counts[label] = counts.get(label, 0) + n
    d = db.dialect
    for label, n in db.execute(f"SELECT {d.json_field('b.value', 'label')}, count(*) FROM examples e,"
                               f" {d.json_items('e.boxes', 'b')} WHERE e.status = 'labeled' GROUP BY 1"):
        counts[label] = counts.get(label, 0) + n
    return counts


def queue(db: Conn, f: QueueFilter, limit: int, offset: int, now: float,
          config: ranking.QueueConfig = ranking.QueueConfig()) -> tuple[list[Item], int]:
    where, args = ["e.status = ?"], [f.status]
    for column, value in (("s.camera_id", f.camera), ("s.agent_id", f.agent), ("s.model_version", f.model_version),
                          ("s.predicted_label", f.predicted), ("s.strategy", f.strategy)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql_where = " WHERE " + " AND ".join(where)
    ranked = _ranked(db, sql_where, args, now)
    if f.status == "pending_review" and offset < ranking.WINDOW:
        return _diverse_page(db, ranked, limit, offset, _strength(db, config), config), len(ranked)
    return _items(db, _rows_by_id(db, [i for i, _ in ranked[offset:offset + limit]])), len(ranked)


def _ranked(db: Conn, sql_where: str, args: list, now: float) -> list[tuple[int, float]]:
    """``(id, expected value)`` of every matching item, best first (ties by id), computed in Python on
    both backends so the order cannot differ between them."""
    # LEFT JOIN: imported unlabelled images have no edge sample but are reviewed too (pre-labelled by a teacher).
    # An import has no edge uncertainty: it ranks as half-uncertain, fresh from when it was added.
    rows = db.execute("SELECT e.id, coalesce(s.uncertainty, 0.5), s.predicted_label,"
                      " coalesce(s.captured_at, e.created_at) FROM examples e LEFT JOIN samples s"
                      " ON s.example_id = e.id" + sql_where, args).fetchall()
    if not rows:
        return []
    counts = class_counts(db)
    top = max(counts.values(), default=0)
    scored = [(i, ranking.expected_value(u, counts.get(p, 0), top, now - t)) for i, u, p, t in rows]
    scored.sort(key=lambda x: (-x[1], x[0]))
    return scored


def _strength(db: Conn, config: ranking.QueueConfig) -> ranking.Strength | None:
    """What the store knows about how weak the model is (None with the cold start off).

    Labels per class as the round counts them; the validation accuracy of the newest finished round
    (recorded by ``trainer.rounds.pipeline``); the labelled examples' embeddings only while the cold
    start has a share to give, so a strong model's queue does not read them.
    """
    if not config.cold_start:
        return None
    counts = class_counts(db)
    project = _project(db)
    s = ranking.Strength(n_labelled=sum(counts.values()), n_classes=len(project.labels) or len(counts),
                         batch=project.batch_size, accuracy=_round_accuracy(db))
    if ranking.cold_share(s, config) == 0.0:
        return s
    rows = db.execute("SELECT e.embedding, s.model_name, s.model_version FROM examples e JOIN samples s"
                      " ON s.example_id = e.id WHERE e.status = 'labeled' AND e.embedding IS NOT NULL"
                      " ORDER BY e.id DESC LIMIT ?", [ranking.LABELLED_MAX]).fetchall()
    return replace(s, labelled=tuple(((m, v), bytes(b)) for b, m, v in rows))


def _round_accuracy(db: Conn) -> float | None:
    """The newest finished round's validation accuracy, when it recorded one (classification only)."""
    row = db.execute("SELECT detail FROM rounds WHERE state = 'done' ORDER BY id DESC LIMIT 1").fetchone()
    try:
        acc = json.loads(row[0]).get("val_accuracy") if row else None
    except (ValueError, AttributeError):  # a detail that is not a JSON object: no accuracy known
        return None
    known = isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0.0 <= acc <= 1.0
    return float(acc) if known else None


def _diverse_page(db: Conn, ranked: list[tuple[int, float]], limit: int, offset: int,
                  strength: ranking.Strength | None = None,
                  config: ranking.QueueConfig = ranking.QueueConfig()) -> list[Item]:
    """The pending queue's page: the best ``ranking.WINDOW`` by expected value in their diverse order
    (cold start first while ``strength`` says the model is weak), then the rest by expected value.
    Each item's ``reason`` starts with why it is where it is."""
    window = ranked[:ranking.WINDOW]
    facts = {r[0]: r[1:] for r in _select_in(
        db, "SELECT e.id, e.embedding, s.model_name, s.model_version, s.uncertainty, s.strategy FROM examples e"
        " LEFT JOIN samples s ON s.example_id = e.id WHERE e.id IN ({marks})", [i for i, _ in window])}
    # An id missing from facts or by_id was deleted between the reads (retention): skipped, not a KeyError.
    cands = [ranking.Candidate(i, v, _bytes(facts[i][0]), (facts[i][1], facts[i][2]), facts[i][3], facts[i][4])
             for i, v in window if i in facts]
    order = ranking.diverse_order(cands, strength, config)[offset:offset + limit]
    by_id = {it.id: it for it in _items(db, _rows_by_id(db, [i for i, _ in order]))}
    page = [replace(by_id[i], reason=f"queue: {why}" + (f" · agent: {by_id[i].reason}" if by_id[i].reason else ""))
            for i, why in order if i in by_id]
    if len(page) < limit and len(window) == ranking.WINDOW:
        rest = ranked[ranking.WINDOW:ranking.WINDOW + limit - len(page)]
        page += _items(db, _rows_by_id(db, [i for i, _ in rest]))
    return page


def _bytes(v) -> bytes | None:
    return None if v is None else bytes(v)


def _select_in(db: Conn, sql: str, ids: list[int]) -> list[tuple]:
    out: list[tuple] = []
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        out += db.execute(sql.format(marks=",".join("?" * len(part))), part).fetchall()
    return out


def _rows_by_id(db: Conn, ids: list[int]) -> list[tuple]:
    """Item rows in the order of ``ids``."""
    rows = {r[0]: r for r in _select_in(db, ITEM_SQL + " WHERE e.id IN ({marks})", ids)}
    return [rows[i] for i in ids if i in rows]


def _state(row: Item) -> dict:
    return {"label": row.label, "boxes": row.boxes, "status": row.status, "labeled_by": row.labeled_by,
            "labeled_at": row.labeled_at, "round_added": row.round_added}


def _check_boxes(boxes: list[dict], labels: tuple[str, ...]) -> list[dict]:
    out = []
    for i, b in enumerate(boxes):
        try:
            x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
            label = b["label"]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidLabel(f"boxes[{i}] needs numeric x1, y1, x2, y2 and a label") from e
        if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            raise InvalidLabel(f"boxes[{i}] must satisfy 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        if label not in labels:
            raise InvalidLabel(f"boxes[{i}].label {label!r:.64} is not one of the project's labels")
        out.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": label})
    return out


def _after(current: Item, project: Project, action: str, label: str | None, boxes: list[dict] | None) -> dict:
    task = project.task or current.task
    if action in ("reject", "skip"):
        return {"status": "rejected" if action == "reject" else "skipped"}
    if action == "accept":
        if current.prediction is None or current.frame_id is None:
            raise InvalidLabel("this example has no model prediction to accept")
        label = current.predicted_label if task == "classification" else None
        boxes = [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in current.prediction["boxes"]]
        if task == "classification" and label is None:
            raise InvalidLabel("the prediction has no label to accept")
    elif action != "label":
        raise InvalidLabel(f"action must be label, accept, reject or skip, not {action!r:.32}")
    if task == "classification":
        if label not in project.labels:
            raise InvalidLabel(f"label {label!r:.64} is not one of the project's labels")
        return {"status": "labeled", "label": label, "boxes": []}
    if boxes is None:
        raise InvalidLabel("a detection label needs boxes (an empty list means no objects)")
    return {"status": "labeled", "label": None, "boxes": _check_boxes(boxes, project.labels)}


def _project(db: Conn) -> Project:
    row = db.execute("SELECT name, task, labels, batch_size FROM projects WHERE id = 1").fetchone()
    return Project(row[0], row[1], tuple(json.loads(row[2])), row[3]) if row else Project("default", None, (), 40)


def _write_state(db: Conn, example_id: int, state: dict) -> None:
    db.execute("UPDATE examples SET label = ?, boxes = ?, status = ?, labeled_by = ?, labeled_at = ?,"
               " round_added = ? WHERE id = ?",
               [state["label"], json.dumps(state["boxes"]), state["status"], state["labeled_by"],
                state["labeled_at"], state["round_added"], example_id])


def apply_action(db: Conn, example_id: int, user: str, action: str, label: str | None,
                 boxes: list[dict] | None, now: float) -> None:
    _lock(db, example_id)
    current = item(db, example_id)
    before = _state(current)
    after = dict(before, **_after(current, _project(db), action, label, boxes))
    after["labeled_by"], after["labeled_at"] = user, now
    if after["status"] == "labeled" and current.source == "edge":
        # The batch it belongs to is the next round's.
        after["round_added"] = db.execute("SELECT coalesce(max(id), 0) + 1 FROM rounds").fetchone()[0]
    _write_state(db, example_id, after)
    db.execute('INSERT INTO label_events (example_id, "user", action, before, after, at) VALUES (?, ?, ?, ?, ?, ?)',
               [example_id, user, action, json.dumps(before), json.dumps(after), now])


def undo(db: Conn, user: str, now: float) -> int:
    row = db.execute('SELECT id, example_id, before, after FROM label_events WHERE "user" = ? AND undone_at IS NULL'
                     " ORDER BY id DESC LIMIT 1" + db.dialect.for_update(), [user]).fetchone()
    if row is None:
        raise NotFound(f"{user} has nothing to undo")
    event_id, example_id, before, after = row[0], row[1], json.loads(row[2]), json.loads(row[3])
    _lock(db, example_id)
    if _state(item(db, example_id)) != after:
        raise Conflict(f"example {example_id} was changed by someone else since; not undoing")
    _write_state(db, example_id, before)
    db.execute("UPDATE label_events SET undone_at = ? WHERE id = ?", [now, event_id])
    return example_id


def _lock(db: Conn, example_id: int) -> None:
    """Hold the example's row until commit (PostgreSQL), so two reviewers' read-then-write cannot interleave."""
    if db.dialect.for_update():
        db.execute("SELECT id FROM examples WHERE id = ?" + db.dialect.for_update(), [example_id]).fetchall()


def _warnings(counts: dict[str, dict[str, int]], labels: tuple[str, ...], task: str | None = None) -> list[str]:
    totals = {label: sum(counts.get(label, {}).values()) for label in labels} or \
        {k: sum(v.values()) for k, v in counts.items()}
    unit = "boxes" if task == "detection" else "examples"  # detection counts objects, as the round does
    out = []
    for label, n in totals.items():
        if n < MIN_PER_CLASS:
            out.append(f"class {label!r} has {n} {unit}; at least {MIN_PER_CLASS} are needed to train")
    if len(totals) >= 2 and sum(totals.values()) > 0:
        top, n_top = max(totals.items(), key=lambda kv: kv[1])
        rest = [n for k, n in totals.items() if k != top]
        if n_top > 2 * max(1, min(rest)) and n_top / sum(totals.values()) > 1.5 / len(totals):
            out.append(f"class {top!r} dominates ({n_top} of {sum(totals.values())}): the model will lean "
                       "towards it; add examples of the other classes")
    return out


def _box_warnings(db: Conn) -> list[str]:
    """Suspicious boxes among the labelled examples (tiny, whole-frame, degenerate, outside the image)."""
    from trainer.train.boxcheck import check_boxes, warnings

    rows = db.execute("SELECT id, boxes, width, height FROM examples WHERE status = 'labeled' AND boxes != '[]'")
    return warnings(check_boxes((str(i), json.loads(b), w, h) for i, b, w, h in rows))


def stats(db: Conn, project: Project) -> dict:
    counts: dict[str, dict[str, int]] = {label: dict.fromkeys(("train", "val", "test", "unassigned"), 0)
                                         for label in project.labels}

    def add(label: str, split: str | None, n: int) -> None:
        counts.setdefault(label, dict.fromkeys(("train", "val", "test", "unassigned"), 0))
        counts[label][split or "unassigned"] += n
    for label, split, n in db.execute("SELECT label, split, count(*) FROM examples WHERE status = 'labeled'"
                                      " AND label IS NOT NULL GROUP BY 1, 2"):
        add(label, split, n)
    d = db.dialect
    for label, split, n in db.execute(f"SELECT {d.json_field('b.value', 'label')}, e.split, count(*) FROM examples e,"
                                      f" {d.json_items('e.boxes', 'b')} WHERE e.status = 'labeled' GROUP BY 1, 2"):
        add(label, split, n)
    total = db.execute("SELECT count(*) FROM examples WHERE status = 'labeled'").fetchone()[0]
    hashes = db.execute("SELECT id, phash FROM examples WHERE phash IS NOT NULL AND status != 'rejected'").fetchall()
    grade = "production grade" if total >= PRODUCTION else "good" if total >= GOOD else "small"
    guidance = (f"{total} labelled examples ({grade}). Train with at least {MIN_PER_CLASS} per class; about {GOOD} "
                f"is good and about {PRODUCTION} is production grade. Keep classes balanced, and add 30-50 "
                "corrected errors per round rather than many similar images.")
    sources = dict(db.execute("SELECT source, count(*) FROM examples WHERE status = 'labeled' GROUP BY 1").fetchall())
    return {"task": project.task, "total": total, "counts": counts, "sources": sources,
            "warnings": _warnings(counts, project.labels, project.task) + _box_warnings(db),
            "guidance": guidance, "duplicate_clusters": ranking.duplicate_clusters([(i, h) for i, h in hashes])}


STALE_MIN_S = 60.0


def fleet(db: Conn, now: float) -> list[dict]:
    """Agents with their last status and telemetry; ``stale`` when an "online" agent went quiet.

    A crash behind a NAT can keep the broker from ever sending the last will, so "online" alone is
    not trusted: three missed telemetry periods (at least a minute) mark the agent stale.
    """
    rows = db.execute("SELECT agent_id, state, model_name, model_version, model_state, cameras, cohorts, detail,"
                      " telemetry, last_seen, software_version FROM agents ORDER BY agent_id").fetchall()
    out = []
    for r in rows:
        tel = json.loads(r[8]) if r[8] else {}
        out.append({"agent_id": r[0], "state": r[1], "model_name": r[2], "model_version": r[3],
                    "model_state": r[4], "cameras": json.loads(r[5]), "cohorts": json.loads(r[6]), "detail": r[7],
                    "fps": tel.get("fps"), "outbox_depth": tel.get("outbox_depth"), "last_seen": r[9],
                    "software_version": r[10], "camera_fps": tel.get("camera_fps", {}),
                    "provider": tel.get("provider", ""),
                    "latency_p50_ms": tel.get("latency_p50_ms"), "drops": tel.get("drops", {}),
                    "stale": r[1] == "online" and now - r[9] > max(3 * tel.get("period_s", 0.0), STALE_MIN_S)})
    return out



