"""A live RTSP camera for tests/test_agent_rtsp.py: GStreamer's RTSP server, run with the system python3.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --fps 25

Serves rtsp://127.0.0.1:PORT/cam: MJPEG over RTP, 160x120 grey frames whose
eight vertical bands spell, in binary (white = 1, most significant bit on
the left), the frame's position in the live stream modulo 256: ``int(seconds
since the server started * fps)``. A client that gets stale frames from a
buffer therefore sees numbers that lag the wall clock, and one reading at a
lower rate than the stream should see numbers that jump.

It needs python3-gi, gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-good
(Debian); the venv's Python cannot load the system's gi, hence a subprocess.
Prints "ready" once it listens; runs until killed.
"""

from __future__ import annotations

import argparse
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

WIDTH, HEIGHT, BITS = 160, 120, 8


def frame_bytes(n: int) -> bytes:
    band = WIDTH // BITS
    row = b"".join((b"\xff" if (n >> (BITS - 1 - i)) & 1 else b"\x00") * band for i in range(BITS))
    return row * HEIGHT


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    Gst.init(None)
    started = time.monotonic()
    duration = Gst.SECOND // args.fps

    def need_data(src, _length, state) -> None:
        n = int((time.monotonic() - started) * args.fps)
        buf = Gst.Buffer.new_wrapped(frame_bytes(n % 256))
        buf.pts = state["pts"]
        buf.duration = duration
        state["pts"] += duration
        src.emit("push-buffer", buf)

    def configure(_factory, media) -> None:
        src = media.get_element().get_child_by_name("src")
        src.connect("need-data", need_data, {"pts": 0})

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( appsrc name=src is-live=true block=false format=time "
        f"caps=video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate={args.fps}/1 "
        f"! videoconvert ! video/x-raw,format=I420 ! jpegenc quality=90 ! rtpjpegpay name=pay0 pt=96 )")
    factory.set_shared(True)
    factory.connect("media-configure", configure)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
