"""A small HTTP proxy in front of the moto S3 server that misbehaves on purpose.

Until it is healed, it answers a fixed fraction of requests with a fault, in a
fixed cycle so a run is repeatable: 503 SlowDown (what S3 says on a busy
prefix), a connection reset before the request reaches S3, and a reset after
S3 has carried the request out (the response is lost: the retry of a
conditional write then meets its own write). Loopback only.

Every request is logged (:attr:`FaultyProxy.log`: method, path, Range
header), so a test can count what a run sent; with ``faults=()`` the proxy
only counts.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy:
    """Forwards to ``upstream`` (``http://127.0.0.1:PORT``); every ``period``-th
    request gets the next fault of ``faults`` until :meth:`heal` (or until
    ``max_faults`` were injected)."""

    def __init__(
        self,
        upstream: str,
        *,
        period: int = 6,
        faults: tuple[str, ...] = ("503", "reset-before", "503", "reset-after"),
        max_faults: int | None = None,
    ):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.period, self.faults, self.max_faults = period, faults, max_faults
        self.requests = 0
        #: (method, path, Range header or None) of every request, in arrival order.
        self.log: list[tuple[str, str, str | None]] = []
        self.injected: Counter[str] = Counter()
        self.healed = False
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # SO_LINGER 0: close sends RST, as a load balancer dropping us does.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes) -> tuple[int, list, bytes]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")
                }
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, resp.getheaders(), data

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._next_fault(self.command, self.path, self.headers.get("Range"))
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "reset-before":
                    self._reset()
                    return
                status, headers, data = self._forward(body)
                if fault == "reset-after":
                    self._reset()
                    return
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next_fault(self, method: str, path: str, byte_range: str | None) -> str | None:
        with self._lock:
            self.requests += 1
            self.log.append((method, path, byte_range))
            total = sum(self.injected.values())
            if (
                not self.faults
                or self.healed
                or (self.max_faults is not None and total >= self.max_faults)
            ):
                return None
            if self.requests % self.period:
                return None
            fault = self.faults[total % len(self.faults)]
            self.injected[fault] += 1
            return fault

    def gets(self, prefix: str) -> list[tuple[str, str, str | None]]:
        """The GETs of objects whose path (``/bucket/key``) starts with ``prefix``
        (a listing is a GET of the bucket itself: it does not count)."""
        with self._lock:
            return [e for e in self.log if e[0] == "GET" and e[1].startswith(prefix)]

    def heal(self) -> None:
        with self._lock:
            self.healed = True

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
