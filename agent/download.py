"""One model download over HTTP(S): a deadline for the whole transfer, a stall timeout, a size cap, cancellation.

``Download(url, ...).save(dest, cap)`` streams the body to ``dest`` (unbuffered,
fsynced) and returns (bytes, sha256 hex). It runs in the caller's thread (the
updater's) and waits only on the network: each read at most
``min(read_timeout_s, time left before the deadline)``, so a server that
drips one byte at a time cannot keep the agent "installing" past
``deadline_s``. ``cancel()`` may be called from any other thread (a rollback
command): it shuts the socket down, so a blocked read returns at once and
``save`` raises ``DownloadError("cancelled")``. A watchdog timer does the
same at the deadline (``download_timeout``), so the deadline also covers a
server that drips the status line or headers (``getresponse()`` reads those
with only the per-read timeout) and a TLS handshake. Threads: the caller's,
and the watchdog's ``threading.Timer`` (it only flags and shuts the socket).

http.client rather than urllib: the socket must be reachable to set each
read's timeout and to shut it down. Redirects are followed (a few hops, each
one checked against ``allow_http``); proxies from the environment are not used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable

CHUNK = 1 << 16
MAX_REDIRECTS = 3


class DownloadError(Exception):
    """``reason`` is one of insecure_url, download_failed, download_timeout, size_mismatch, cancelled."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class Download:
    def __init__(self, url: str, *, deadline_s: float, read_timeout_s: float, allow_http: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.deadline_s = deadline_s
        self.read_timeout_s = read_timeout_s
        self.allow_http = allow_http
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._cancelled = False
        self._expired = False  # the watchdog fired
        self._ends = 0.0

    def cancel(self) -> None:
        """Stop the transfer from another thread; ``save`` then raises ``cancelled``."""
        with self._lock:
            self._cancelled = True
        self._shut()

    def _expire(self) -> None:
        """The watchdog: the deadline passed wherever ``save`` is waiting (connect, headers, body)."""
        with self._lock:
            self._expired = True
        self._shut()

    def _shut(self) -> None:
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:  # the plain socket's shutdown: SSLSocket.shutdown would drop its state under a running read
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def save(self, dest: Path, cap: int) -> tuple[int, str]:
        """Stream the body to ``dest``; stop past ``cap`` bytes, at the deadline, or when cancelled."""
        self._ends = self.clock() + self.deadline_s
        watchdog = threading.Timer(self.deadline_s, self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            resp = self._open()
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise DownloadError("size_mismatch", f"server offers {length} bytes, more than the {cap} expected")
            return self._stream(resp, dest, cap)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._check_stop()
            raise DownloadError("download_failed", f"{self.url}: {e}") from e
        finally:
            watchdog.cancel()
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _timeout(self) -> float:
        """The next wait: the stall timeout, cut to what is left of the deadline."""
        self._check_stop()
        return min(self.read_timeout_s, self._ends - self.clock())

    def _check_stop(self) -> None:
        with self._lock:
            if self._cancelled:
                raise DownloadError("cancelled", f"{self.url}: cancelled (a rollback command)")
            expired = self._expired
        if expired or self.clock() >= self._ends:
            raise DownloadError("download_timeout", f"{self.url}: not complete after download_deadline_s "
                                                    f"{self.deadline_s:g} s")

    def _open(self) -> http.client.HTTPResponse:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "http" and not self.allow_http:
                raise DownloadError("insecure_url", f"{url} is plain http and updates.allow_http is false")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise DownloadError("download_failed", f"{url}: not an http(s) URL")
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self._timeout(),
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._timeout())
            with self._lock:
                self._conn = conn
            conn.connect()
            self._check_stop()  # a cancel() during connect() found no socket to shut down
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                         headers={"User-Agent": "edgeloop-agent"})
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                url = urllib.parse.urljoin(url, location)
                conn.close()
                continue
            if resp.status != 200:
                raise DownloadError("download_failed", f"{url}: HTTP {resp.status} {resp.reason}")
            return resp
        raise DownloadError("download_failed", f"{self.url}: more than {MAX_REDIRECTS} redirects")

    def _stream(self, resp: http.client.HTTPResponse, dest: Path, cap: int) -> tuple[int, str]:
        h, n = hashlib.sha256(), 0
        sock = self._conn.sock if self._conn is not None else None
        with open(dest, "wb", buffering=0) as fh:
            while True:
                timeout = self._timeout()
                if sock is not None:
                    sock.settimeout(timeout)
                try:
                    block = resp.read1(CHUNK)  # what has arrived, not a full chunk
                except TimeoutError as e:
                    self._check_stop()
                    if timeout < self.read_timeout_s:  # the wait was cut short by the deadline
                        raise DownloadError("download_timeout", f"{self.url}: not complete after "
                                                                f"download_deadline_s {self.deadline_s:g} s") from e
                    raise DownloadError("download_failed", f"{self.url}: no data for "
                                                           f"{self.read_timeout_s:g} s") from e
                if not block:
                    self._check_stop()  # a cancel() ends the body early: not a short file
                    break
                n += len(block)
                if n > cap:
                    raise DownloadError("size_mismatch", f"download exceeds the signed size {cap}")
                h.update(block)
                fh.write(block)
            os.fsync(fh.fileno())
        return n, h.hexdigest()
