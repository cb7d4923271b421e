"""A threaded HTTP server on 127.0.0.1 with scripted misbehaviour that records every request (no internet)."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


@dataclass
class Route:
    body: bytes
    status: int = 200
    fail_first: int = 0  # answer 503 to the first n requests
    delay: float = 0.0  # seconds before answering
    truncate: int = 0  # send only this many bytes (Content-Length stays the full size) on truncated requests
    truncate_times: int = 10**9  # how many requests are truncated (when truncate > 0)
    ranges: bool = True  # honour Range with 206
    hits: int = 0
    range_headers: list[str] = field(default_factory=list)


class Loopback:
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` (path -> Route)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with server.lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    route = server.routes.get(self.path)
                    if route is not None:
                        route.hits += 1
                        hit = route.hits
                        if self.headers.get("Range"):
                            route.range_headers.append(self.headers["Range"])
                try:
                    self._answer(route, hit if route else 0)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server.lock:
                        server.active -= 1

            def _answer(self, route: Route | None, hit: int) -> None:
                if route is None or route.status == 404:
                    self.send_error(404, "Not Found")
                    return
                if route.delay:
                    time.sleep(route.delay)
                if hit <= route.fail_first or route.status >= 500:
                    self.send_error(503, "Service Unavailable")
                    return
                body, status, start = route.body, 200, 0
                asked = self.headers.get("Range", "")
                if route.ranges and asked.startswith("bytes="):
                    start = int(asked[6:].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                if route.truncate and hit <= route.truncate_times:
                    payload = payload[: route.truncate]
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, **kw: object) -> Route:
        self.routes[path] = Route(body=body, **kw)
        return self.routes[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def jpeg(colour=(200, 30, 30), mode="RGB", size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="JPEG")
    return buf.getvalue()
