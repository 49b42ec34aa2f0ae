"""A real HTTP file server on 127.0.0.1 for URL sources: Python's own, which answers conditional requests
(If-Modified-Since -> 304) as many static servers do, and counts what it sent."""

from __future__ import annotations

import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bodies_sent = 0
        self.not_modified = 0
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def send_response(self, code: int, message: str | None = None) -> None:
                if self.command == "GET" and code == 200:
                    server.bodies_sent += 1
                elif code == 304:
                    server.not_modified += 1
                super().send_response(code, message)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def replace(self, path: Path, text: str) -> None:
        """New content with a later Last-Modified (HTTP dates have one-second resolution)."""
        before = path.stat().st_mtime
        path.write_text(text)
        os.utime(path, (before + 10, before + 10))

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
