"""The HTTP side of `mert serve`: the standard library's ThreadingHTTPServer on 127.0.0.1.

Routes (JSON unless said otherwise)::

    GET  /                      the page (static/index.html); /static/app.js, /static/style.css
    GET  /api/info              store, model, layers, splits, the probe (or null)
    GET  /api/tracks            every track: id, name, path, split, duration
    GET  /api/neighbours        ?track=ID | ?upload=ID, &layer=K, &k=N
    GET  /api/map               ?layer=K: PCA coordinates, one [x, y] per track id
    GET  /api/predict           ?track=ID | ?upload=ID: the saved probe's outputs
    POST /api/upload            body: audio bytes, header X-File-Name (URL-encoded): embeds it
    GET  /audio/ID              the audio file of a stored track (byte ranges supported)

Only loopback: the socket binds 127.0.0.1, and a request whose Host header is not
127.0.0.1/localhost at this port is refused (a web page elsewhere cannot reach the server
through a DNS name that resolves to 127.0.0.1), as is an upload from another origin. Only
files recorded in the store are served, by track id; no request names a path.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mertkit.serve.catalog import Catalog, ServeError

__all__ = ["HOST", "make_server"]

HOST = "127.0.0.1"
LOG = logging.getLogger("mertkit.serve")
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Browsers' names for the formats the extractor reads; mimetypes lacks several of them.
AUDIO_TYPES = {
    ".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".oga": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4", ".mp4": "audio/mp4",
    ".aac": "audio/aac", ".aif": "audio/aiff", ".aiff": "audio/aiff", ".webm": "audio/webm",
    ".mka": "audio/x-matroska", ".wma": "audio/x-ms-wma",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16
DEFAULT_K = 10
MAX_K = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, catalog: Catalog, max_upload_bytes: int) -> None:
        self.catalog = catalog
        self.max_upload_bytes = max_upload_bytes
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def allowed_hosts(self) -> set[str]:
        port = self.server_address[1]
        return {f"{HOST}:{port}", f"localhost:{port}"}


def make_server(catalog: Catalog, port: int = 0, *, max_upload_bytes: int = 200 << 20) -> _Server:
    """A server for ``catalog`` bound to 127.0.0.1:``port`` (0: a free port; see ``.url``)."""
    return _Server(port, catalog, max_upload_bytes)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mertkit-serve"

    # -------------------------------------------------------------- dispatch

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._allowed():
            return
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        catalog = self.server.catalog
        try:
            if url.path in ("/", "/index.html"):
                self._static("index.html")
            elif url.path.startswith("/static/"):
                self._static(url.path[len("/static/"):])
            elif url.path.startswith("/audio/"):
                self._audio(url.path[len("/audio/"):])
            elif url.path == "/api/info":
                self._json({**catalog.info(), "max_upload_bytes": self.server.max_upload_bytes})
            elif url.path == "/api/tracks":
                self._json({"tracks": [track.to_dict() for track in catalog.tracks]})
            elif url.path == "/api/neighbours":
                k = _int(query.get("k", DEFAULT_K), "k", 1, MAX_K)
                self._json(catalog.neighbours(layer=catalog.layer(query.get("layer")), k=k,
                                              track_id=query.get("track"), upload_id=query.get("upload")))
            elif url.path == "/api/map":
                self._json(catalog.layer_map(catalog.layer(query.get("layer"))))
            elif url.path == "/api/predict":
                self._json(catalog.predict(track_id=query.get("track"), upload_id=query.get("upload")))
            else:
                raise ServeError(f"no such page: {url.path}", 404)
        except ValueError as error:  # ServeError and the store's / probe's own errors
            self._error(error)

    def do_POST(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        try:
            if urlsplit(self.path).path != "/api/upload":
                raise ServeError(f"no such endpoint: POST {self.path}", 404)
            name = unquote(self.headers.get("X-File-Name", "upload"))
            upload = self.server.catalog.add_upload(name, self._body())
            self._json({"upload": upload.id, "name": upload.name})
        except ValueError as error:
            self._error(error)

    # -------------------------------------------------------------- guards

    def _allowed(self) -> bool:
        """Loopback clients, addressed by a loopback name, and (for uploads) from this origin."""
        host = self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        allowed = self.server.allowed_hosts()
        if self.client_address[0] != HOST or host not in allowed:
            self._error(ServeError(f"mert serve answers only requests to {self.server.url}", 403))
            return False
        if origin is not None and origin.removeprefix("http://") not in allowed:
            self._error(ServeError(f"requests from {origin} are refused", 403))
            return False
        return True

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ServeError("an upload needs a Content-Length header", 411)
        size = int(length)
        if size > self.server.max_upload_bytes:
            # Read the body away (loopback: cheap) so the client gets this answer, not a broken pipe.
            while size > 0:
                chunk = self.rfile.read(min(CHUNK, size))
                if not chunk:
                    break
                size -= len(chunk)
            raise ServeError(f"the file is {int(length) / 2**20:.0f} MB; uploads are limited to "
                             f"{self.server.max_upload_bytes / 2**20:.0f} MB", 413)
        return self.rfile.read(size)

    # -------------------------------------------------------------- responses

    def _json(self, payload: Any, status: int = 200) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        self._send(status, "application/json", body, {"Cache-Control": "no-store"})

    def _error(self, error: ValueError) -> None:
        status = error.status if isinstance(error, ServeError) else 500
        LOG.info("%s %s: %s", status, self.path, error)
        self._json({"error": str(error)}, status)

    def _static(self, name: str) -> None:
        if name not in STATIC_FILES:
            raise ServeError(f"no such file: /static/{name}", 404)
        body = resources.files("mertkit.serve").joinpath("static", name).read_bytes()
        self._send(200, STATIC_FILES[name], body, {"Cache-Control": "no-cache"})

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(headers)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _common_headers(self, headers: dict[str, str] | None) -> None:
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)

    def _audio(self, track_id: str) -> None:
        path = self.server.catalog.audio_file(track_id)
        size = path.stat().st_size
        content_type = AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        start, end, status = 0, size - 1, 200
        requested = self.headers.get("Range")
        if requested:
            start, end = _byte_range(requested, size)
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self._common_headers({"Cache-Control": "no-cache"})
        self.end_headers()
        with path.open("rb") as handle:
            handle.seek(start)
            left = end - start + 1
            try:
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                # Browsers drop media requests when they seek or have buffered enough.
                self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        LOG.debug("%s %s", self.address_string(), format % args)


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) byte of a single ``bytes=a-b`` range; anything else is 416."""
    match = RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise ServeError(f"unsupported Range {header!r} (one bytes=a-b range)", 416)
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        raise ServeError(f"Range {header!r} is outside the file's {size} bytes", 416)
    return start, end


def _int(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as error:
        raise ServeError(f"{name} must be an integer, got {value!r}") from error
    if not low <= number <= high:
        raise ServeError(f"{name} must be between {low} and {high}, got {number}")
    return number
