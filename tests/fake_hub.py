"""A stand-in for the Hugging Face Hub on 127.0.0.1 (``HF_ENDPOINT``): it records the Authorization header
of every request and refuses each one as the Hub refuses a bad token (HTTP 401 with its JSON error), so
the project's Hub clients really send ``HF_TOKEN`` and then take their error paths. Not a test module."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    """``with FakeHub() as hub``: ``hub.url`` to point clients at, ``hub.requests`` (method, path, auth)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        hub = self

        class Refuse(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _refuse

            def log_message(self, *args: object) -> None:  # keep pytest's output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
