"""A slow model download neither outlives its deadline nor holds commands (issue 11, finding 7).

The attack: a server that drips one byte every few seconds never trips a
per-read timeout, so the agent stayed "installing" for as long as the server
liked, and a rollback command waited behind the download. A real HTTP server
on a socket drips here; the agent side is the real Updater, and over MQTT the
real in-process agent with a real broker.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from agent.download import Download, DownloadError
from agent_helpers import (Collector, announcement, base_config, keys, make_classifier, running,  # noqa: F401
                           site, write_config)
from mqtt_util import publish, wait_until
from protocol import Command, encode
from protocol.topics import announce_topic, command_topic
from test_agent_updates import Rig

import pytest


class DripServer:
    """HTTP on a real socket: headers at once, then the body one byte per ``interval`` for ``drip_s`` seconds,
    then the rest; it records how many bytes it sent and whether the client hung up."""

    def __init__(self, body: bytes, interval: float, drip_s: float) -> None:
        self.body, self.interval, self.drip_s = body, interval, drip_s
        self.sent = 0
        self.hung_up = threading.Event()
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/model.onnx"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        self.requests += 1
        with conn:
            conn.recv(65536)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n".encode())
            ends = time.monotonic() + self.drip_s
            try:
                for i in range(len(self.body)):
                    if time.monotonic() >= ends:
                        conn.sendall(self.body[i:])
                        self.sent = len(self.body)
                        return
                    conn.sendall(self.body[i:i + 1])
                    self.sent = i + 1
                    if self._stop.wait(self.interval):
                        return
            except OSError:  # the agent closed the connection
                self.hung_up.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def model_body(tmp_path) -> Path:
    return make_classifier(tmp_path / "www" / "v3.onnx", version=3, seed=3, embed_card=False)


def test_a_dripping_server_is_cut_off_at_the_download_deadline(tmp_path, keys, model_body):
    key, pub = keys
    # each byte comes well within the 1 s stall timeout; before the deadline existed this download ran 20 s
    server = DripServer(model_body.read_bytes(), interval=0.2, drip_s=20)
    try:
        rig = Rig(tmp_path, pub, download_timeout_s=1.0, download_deadline_s=2.0)
        assert not rig.updater.apply(announcement(model_body, key, server.url, 3))
        assert (rig.version, rig.holder.model_state) == (1, "failed")
        assert "download_timeout" in rig.holder.detail and "download_deadline_s 2 s" in rig.holder.detail
        assert 0 < server.sent < len(model_body.read_bytes())  # cut off, not served to the end
        assert not list(rig.store.incoming.iterdir()) and rig.version_dirs() == []
    finally:
        server.close()


def test_cancel_stops_a_blocked_read_at_once(tmp_path, model_body):
    # the server sends nothing for 30 s after one byte: the read blocks until cancel() shuts the socket down
    server = DripServer(model_body.read_bytes(), interval=30, drip_s=60)
    d = Download(server.url, deadline_s=120, read_timeout_s=60, allow_http=True)
    errors = []
    t = threading.Thread(target=lambda: _save(d, tmp_path / "x.part", errors))
    try:
        t.start()
        assert wait_until(lambda: server.sent == 1, 10)
        d.cancel()
        t.join(10)
        assert not t.is_alive()
        assert [e.reason for e in errors] == ["cancelled"]
    finally:
        server.close()


def _save(d: Download, dest: Path, errors: list) -> None:
    try:
        d.save(dest, 1 << 20)
    except DownloadError as e:
        errors.append(e)


def test_a_rollback_command_does_not_wait_behind_a_download(broker, tmp_path, keys, site, model_body):
    """Over MQTT with the real agent: v2 runs, v3 drips for a minute, a rollback command lands at once."""
    key, pub = keys
    root, url = site
    v1 = make_classifier(tmp_path / "v1.onnx", version=1)
    cfg = base_config(tmp_path, broker, v1, updates={"enabled": True, "trusted_keys": [pub], "allow_http": True,
                                                     "health": {"enabled": False}})
    path = write_config(tmp_path / "a.toml", cfg)
    v2 = make_classifier(root / "v2.onnx", version=2, seed=2, embed_card=False)
    server = DripServer(model_body.read_bytes(), interval=0.5, drip_s=60)
    collector = Collector(broker.host, broker.port)
    try:
        with running(path) as agent:
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(v2, key, f"{url}/v2.onnx", 2)), retain=True)
            assert wait_until(lambda: agent.holder.ref.version == 2 and agent.holder.model_state == "ok", 20)
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(model_body, key, server.url, 3)), retain=True)
            assert wait_until(lambda: server.sent >= 2, 20)
            assert "installing v3" in agent.holder.detail
            cmd = Command(command_id="c1", action="rollback", issued_at=time.time())
            publish(broker.host, broker.port, command_topic("agent-1"), encode(cmd))
            # the download had ~55 s left: the rollback must not wait for it
            assert wait_until(lambda: (s := collector.last_status()) is not None and s.model_version == 1
                              and s.model_state == "reverted", 20), collector.last_status()
            assert server.hung_up.wait(10)  # the agent dropped the transfer instead of finishing it
            state = agent.updater.store.load()
            assert (state.current.version, state.blocked, state.last["result"]) == (1, (2,), "rolled_back")
            assert not (agent.updater.store.root / "v3").exists()
            assert server.sent < len(model_body.read_bytes())
    finally:
        collector.close()
        server.close()


def test_redirects_are_followed_a_few_hops_and_errors_are_typed(tmp_path, model_body):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = model_body.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.startswith("/hop/"):
                n = int(self.path.rsplit("/", 1)[1])
                self.send_response(302)
                self.send_header("Location", f"/hop/{n - 1}" if n > 0 else "/model.onnx")
                self.end_headers()
            elif self.path == "/model.onnx":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/silent":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(3)  # headers, then nothing: the stall timeout ends it
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def fetch(path: str, **kw) -> tuple[int, str] | str:
        opts = {"deadline_s": 30, "read_timeout_s": 5, "allow_http": True, **kw}
        try:
            return Download(base + path, **opts).save(tmp_path / "x.part", len(body))
        except DownloadError as e:
            return e.reason

    try:
        n, _sha = fetch("/hop/2")  # three redirects: followed
        assert n == len(body) and (tmp_path / "x.part").read_bytes() == body
        assert fetch("/hop/3") == "download_failed"  # four: refused
        assert fetch("/nothing") == "download_failed"
        assert fetch("/model.onnx", allow_http=False) == "insecure_url"
        assert fetch("/silent", read_timeout_s=0.5) == "download_failed"
        assert fetch("/silent", read_timeout_s=5, deadline_s=1.0) == "download_timeout"
        small = Download(base + "/model.onnx", deadline_s=30, read_timeout_s=5, allow_http=True)
        with pytest.raises(DownloadError, match="size_mismatch"):
            small.save(tmp_path / "y.part", len(body) - 1)  # more than the signed size is offered
    finally:
        server.shutdown()
        server.server_close()


class SlowHeaderServer:
    """The status line at once, then one header byte per ``interval`` for ``drip_s`` seconds, then a complete
    response: only a deadline that covers ``getresponse()`` ends the download before the headers do."""

    def __init__(self, body: bytes, interval: float, drip_s: float) -> None:
        self.body, self.interval, self.drip_s = body, interval, drip_s
        self.hung_up = threading.Event()
        self.finished = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/model.onnx"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                ends = time.monotonic() + self.drip_s
                while time.monotonic() < ends:
                    conn.sendall(b"x")  # each byte well within the per-read timeout
                    time.sleep(self.interval)
                conn.sendall(f"\r\nContent-Length: {len(self.body)}\r\n\r\n".encode() + self.body)
                self.finished.set()
            except OSError:  # the agent hung up
                self.hung_up.set()

    def close(self) -> None:
        self.sock.close()


def test_the_deadline_covers_slow_response_headers(tmp_path, model_body):
    server = SlowHeaderServer(model_body.read_bytes(), interval=0.2, drip_s=15)
    d = Download(server.url, deadline_s=1.5, read_timeout_s=1.0, allow_http=True)
    errors: list = []
    try:
        _save(d, tmp_path / "x.part", errors)
        assert [e.reason for e in errors] == ["download_timeout"]
        # cut off while the headers were still coming, not served to the end
        assert not server.finished.is_set() and server.hung_up.wait(10)
    finally:
        server.close()


def test_a_rollback_before_the_transfer_is_registered_still_cancels_it(tmp_path, keys, model_body):
    """The window between the install taking its epoch and the download registering its transfer: the
    install's own on_change call (made inside that window) sends the rollback, deterministically."""
    key, pub = keys
    server = DripServer(model_body.read_bytes(), interval=0.2, drip_s=20)
    try:
        rig = Rig(tmp_path, pub, download_timeout_s=1.0, download_deadline_s=2.0)
        calls = []

        def changed() -> None:
            calls.append(rig.holder.detail)
            if rig.holder.detail == "installing v3" and len(calls) == 1:
                rig.updater._cancel_install()  # what request_rollback does first, on the MQTT thread
        rig.updater.on_change = changed
        assert not rig.updater.apply(announcement(model_body, key, server.url, 3))
        assert "cancelled" in rig.holder.detail, rig.holder.detail
        assert server.requests == 0  # no transfer was started to wait for
    finally:
        server.close()
