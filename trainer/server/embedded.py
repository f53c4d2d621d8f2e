"""Run the server inside this process on a free port (tests, demos, the browser test)."""

from __future__ import annotations

import threading
import time

import uvicorn

from .app import create_app
from .config import ServerConfig


class EmbeddedServer:
    """``with EmbeddedServer(config, token) as srv: httpx.get(srv.url + "healthz")``."""

    def __init__(self, config: ServerConfig, token: str) -> None:
        self.app = create_app(config, token)
        self.token = token
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=config.http.host, port=config.http.port,
                                                     log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.url = ""

    @property
    def service(self):
        return self.app.state.service

    def start(self, timeout: float = 20.0) -> "EmbeddedServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded server did not start")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(20)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
