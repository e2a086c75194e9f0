"""Fixtures shared by the tests of nanoar.datasets: a local HTTP server, a dead URL, no pooch.

No test needs the network: downloads come from a server on 127.0.0.1.  Import the
fixtures a test module uses by name (``from datasets_fixtures import server, ...``);
``clear_proxies`` is autouse, so importing it makes every test of that module ignore
proxy settings from the environment (a proxy would not reach 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
import time

import pytest

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        mode, body = self.server.routes.get(self.path, (None, None))
        self.server.hits.append(self.path)
        if body is None:
            self.send_error(404)
            return
        if mode == "hang":
            time.sleep(1.0)
        self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if mode in ("truncate", "nolength"):
                # Send half, then the connection is closed (HTTP/1.0 handler).
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the timeout tests)

    def log_message(self, *args):  # keep test output clean
        pass


class LocalServer:
    """Serves bytes at paths the tests choose; ``mode`` picks a misbehaviour."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.hits = []
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, mode: str = "ok") -> str:
        """Serve ``body`` at ``path``; mode 'ok', 'hang' (1 s before answering), 'truncate'
        (half the body, then close) or 'nolength' (the same without a Content-Length)."""
        self.httpd.routes[path] = (mode, body)
        return self.base + path

    @property
    def hits(self):
        return self.httpd.hits

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = LocalServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def clear_proxies(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def no_pooch(monkeypatch):
    """Make ``import pooch`` fail, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "pooch", None)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
