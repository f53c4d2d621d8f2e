"""The on-disk outbox: eviction order, byte bound, counters that survive a restart."""

from __future__ import annotations

import os

import pytest

from agent.outbox import ROW_OVERHEAD, Outbox


def payload(i: int, size: int = 20_000) -> bytes:
    return os.urandom(size - 8) + i.to_bytes(8, "big")


@pytest.fixture
def box(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite", max_bytes=1024 * 1024)
    yield ob
    ob.close()


def test_put_due_ack_and_counters(box):
    for i in range(5):
        box.put(f"f{i}", "t", "cam", 0.5, payload(i, 1000)).result()
    assert [it.frame_id for it in box.due(3)] == ["f0", "f1", "f2"]
    assert [it.frame_id for it in box.due(3, exclude={"f0", "f2"})] == ["f1", "f3", "f4"]
    assert box.ack(["f1", "f3", "unknown"], rejected=["f4"]).result() == 3
    s = box.stats()
    assert (s.picked, s.delivered, s.rejected, s.evicted, s.pending) == (5, 2, 1, 0, 2)
    box.put("f0", "t", "cam", 0.5, b"again").result()  # the same frame twice is one frame
    assert box.stats().picked == 5


def test_eviction_order_and_byte_bound(box):
    # 0.7 MiB of row budget, 20 kB per frame: about 35 fit. Uncertainty cycles so the order is visible.
    uncertainty = {f"f{i:03d}": (i % 7) / 10 for i in range(120)}
    evicted = []
    for i, (fid, u) in enumerate(uncertainty.items()):
        evicted += box.put(fid, "t", "cam", u, payload(i)).result()
        assert box.disk_bytes() <= box.max_bytes
    s = box.stats()
    assert s.evicted == len(evicted) > 0
    assert s.picked == 120 == s.delivered + s.rejected + s.evicted + s.pending
    assert s.pending_bytes <= box.data_budget
    kept = box.pending_ids()
    # what stays is what is most uncertain; among equals the newest survive
    assert min(uncertainty[k] for k in kept) >= max(uncertainty[e] for e in evicted) - 1e-9
    cut = min(uncertainty[k] for k in kept)
    tied_kept = [k for k in kept if uncertainty[k] == cut]
    tied_evicted = [e for e in evicted if uncertainty[e] == cut]
    if tied_kept and tied_evicted:
        assert min(tied_kept) > max(tied_evicted)
    assert len(kept) * (20_000 + ROW_OVERHEAD) <= box.data_budget


def test_a_frame_bigger_than_the_budget_is_evicted_at_once(box):
    assert box.put("huge", "t", "cam", 1.0, os.urandom(900_000)).result() == ["huge"]
    s = box.stats()
    assert (s.picked, s.evicted, s.pending) == (1, 1, 0)


def test_counters_and_rows_survive_reopen(tmp_path):
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, 1024 * 1024)
    for i in range(4):
        ob.put(f"f{i}", "topic/x", "cam", 0.1 * i, payload(i, 500)).result()
    ob.ack(["f0"]).result()
    ob.close()
    again = Outbox(path, 1024 * 1024)
    try:
        s = again.stats()
        assert (s.picked, s.delivered, s.pending) == (4, 1, 3)
        items = again.due(10)
        assert [i.frame_id for i in items] == ["f1", "f2", "f3"] and items[0].topic == "topic/x"
        assert items[0].payload.endswith((1).to_bytes(8, "big"))
    finally:
        again.close()
