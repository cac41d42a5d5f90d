"""The trainer's checkpoints over HTTP, for workers that share no folder with it
(:mod:`serving.fetch` reads them; ``TWINSTREAM_CHECKPOINT_HTTP_PORT`` turns it on).

``GET /checkpoints/latest`` answers ``{"version": N}`` (the newest complete snapshot folder, 0 when
none); ``GET /checkpoints/v00000042/<file>`` streams one of the files a worker needs (manifest,
its MAC, weights, id maps). Nothing else is served: names are matched against a closed pattern,
files opened without following symlinks and only when regular. It binds ``Settings.http_host``
(127.0.0.1 unless told). What it serves is verified by the worker: sha256 against the manifest,
the manifest against the trainer's HMAC where a key is set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serving.manifest import IDMAPS_FILE, MAC_FILE, MANIFEST_FILE, MODEL_FILE
from serving.snapshot import list_snapshots, snapshot_version

log = logging.getLogger("twinstream.trainer")
SERVED_FILES = (MANIFEST_FILE, MAC_FILE, MODEL_FILE, IDMAPS_FILE)
_FILE_PATH = re.compile(r"^/checkpoints/(v\d{8,})/([a-z.]+)$")
CHUNK = 1 << 20


class CheckpointServer:
    """Serves ``folder``'s snapshots on ``host:port`` from a thread of its own."""

    def __init__(self, folder: Path, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"folder": Path(folder)})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="checkpoint-server", daemon=True
        )

    def start(self) -> CheckpointServer:
        self._thread.start()
        log.info("serving checkpoints on port %d", self.port)
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    folder: Path
    timeout = 30

    def do_GET(self) -> None:
        if self.path == "/checkpoints/latest":
            found = list_snapshots(self.folder)
            version = snapshot_version(found[-1]) if found else 0
            self._send(200, json.dumps({"version": version}).encode())
            return
        m = _FILE_PATH.match(self.path)
        if m is None or m.group(2) not in SERVED_FILES:
            self._send(404, b"not found")
            return
        self._file(self.folder / m.group(1), m.group(2))

    def _file(self, folder: Path, name: str) -> None:
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            self._send(404, b"not found")
            return
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                self._send(404, b"not found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(info.st_size))
            self.end_headers()
            left = info.st_size
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("checkpoint server: " + format, *args)
