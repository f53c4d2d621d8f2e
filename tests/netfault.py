"""A TCP proxy that breaks the network between an agent and the broker, for the fault tests.

``FaultProxy(target_port)`` listens on a free loopback port and forwards each
connection to the broker. ``stall()`` stops moving bytes in both directions
while keeping the connections open (a dead link that TCP does not notice:
only MQTT keepalive finds it); ``drop()`` closes every connection and refuses
new ones (accepted, then closed at once); ``restore()`` forwards again.

With ``inspect=True`` the proxy also reads the MQTT packets it forwards
(fixed header and remaining length) so that faults can hit single messages
while the stream stays valid MQTT:

* ``corrupt(frame_id) -> bool``: a sample PUBLISH from the agent whose frame
  id it names gets its JPEG's first byte zeroed (bit rot the envelope cannot
  see; the collector refuses the frame as ``not_jpeg``). Every copy of that
  frame, resends included, is corrupted the same way;
* ``drop_receipts``: while set, receipt PUBLISHes to the agent vanish
  (the agent neither gets the receipt nor can it tell).

Threads: one acceptor, two pumps per connection. Nothing here waits on more
than a socket read of 0.2 s or the stall event.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

from protocol import envelope

PUBLISH = 3


def _remaining_length(buf: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(value, bytes used) of the MQTT variable-length integer at ``start``; None when incomplete."""
    value, shift = 0, 0
    for i in range(4):
        if start + i >= len(buf):
            return None
        b = buf[start + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("malformed MQTT remaining length")


def split_packets(buf: bytearray) -> list[bytes]:
    """Remove and return the complete MQTT packets at the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        rl = _remaining_length(buf, 1)
        if rl is None:
            break
        total = 1 + rl[1] + rl[0]
        if len(buf) < total:
            break
        out.append(bytes(buf[:total]))
        del buf[:total]
    return out


def publish_parts(packet: bytes) -> tuple[str, int] | None:
    """(topic, payload offset) of a PUBLISH packet, else None."""
    if packet[0] >> 4 != PUBLISH:
        return None
    _, used = _remaining_length(packet, 1)
    at = 1 + used
    n = int.from_bytes(packet[at:at + 2], "big")
    topic = packet[at + 2:at + 2 + n].decode("utf-8", "replace")
    at += 2 + n
    if (packet[0] >> 1) & 3:  # QoS 1 or 2: a packet id follows the topic
        at += 2
    return topic, at


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, inspect: bool = False,
                 corrupt: Callable[[str], bool] | None = None) -> None:
        self.target = (target_host, target_port)
        self.inspect = inspect or corrupt is not None
        self.corrupt = corrupt
        self.corrupted: set[str] = set()  # frame ids whose JPEG was zeroed at least once
        self.drop_receipts = threading.Event()
        self.receipts_dropped = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    # -- control ----------------------------------------------------------------

    def stall(self) -> None:
        self._flowing.clear()

    def drop(self) -> None:
        self._refusing.set()
        self._close_all()
        self._flowing.set()

    def restore(self) -> None:
        self._refusing.clear()
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._refusing.set()
        self.listener.close()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    # -- forwarding ---------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._refusing.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()  # the broker is down: the agent sees a refused session
                continue
            with self._lock:
                self._conns += [client, upstream]
                self.connections += 1
            for src, dst, outgoing in ((client, upstream, True), (upstream, client, False)):
                src.settimeout(0.2)
                threading.Thread(target=self._pump, args=(src, dst, outgoing), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outgoing: bool) -> None:
        pending = bytearray()
        try:
            while True:
                self._flowing.wait()
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self._flowing.wait()  # bytes read just before a stall are held, not sent
                if not self.inspect:
                    dst.sendall(data)
                    continue
                pending += data
                for packet in split_packets(pending):
                    packet = self._filter(packet, outgoing)
                    if packet:
                        dst.sendall(packet)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _filter(self, packet: bytes, outgoing: bool) -> bytes | None:
        parts = publish_parts(packet)
        if parts is None:
            return packet
        topic, at = parts
        if not outgoing and topic.endswith("/receipts") and self.drop_receipts.is_set():
            self.receipts_dropped += 1
            return None
        if outgoing and self.corrupt is not None and "/samples/" in topic:
            payload = packet[at:]
            try:
                _kind, header, _body = envelope.unpack(payload)
            except Exception:  # noqa: BLE001 - not ours to judge: forwarded untouched
                return packet
            frame_id = header.get("frame_id", "")
            if self.corrupt(frame_id):
                jpeg_at = at + envelope.PREFIX.size + int.from_bytes(payload[6:10], "big")
                self.corrupted.add(frame_id)
                return packet[:jpeg_at] + b"\x00" + packet[jpeg_at + 1:]
        return packet
