"""A loopback HTTP server that serves one Debian mirror to build VMs, and nothing else.

A build VM's network is restricted (nothing leaves QEMU), yet ``apt-get build-dep`` inside it
needs the suite's archive.  This server listens on ``127.0.0.1`` only (the guest reaches it
through a ``guestfwd`` relay, builder.tools.relay) and answers ``GET``/``HEAD`` for
``dists/...`` and ``pool/...`` by fetching the same path from the configured mirror: the guest
cannot name any other host or path.  apt in the guest checks every file against the suite's
signed InRelease with the image's own keyring, as it would against the mirror itself.

Pool files never change under one name, so they are kept in a cache on the host: a package's
build dependencies are downloaded once for every VM that builds with them.  Index files are
passed through.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from builder.infra import log

ALLOWED = re.compile(r"/(dists|pool)/[A-Za-z0-9._+~/-]+")
CHUNK = 1 << 16
TIMEOUT = 60.0


@dataclass
class Counts:
    requests: int = 0
    hits: int = 0
    refused: int = 0
    missing: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **what: int) -> None:
        with self.lock:
            for k, v in what.items():
                setattr(self, k, getattr(self, k) + v)


def allowed(path: str) -> bool:
    """A request path (percent-decoded, as apt encodes ``+`` and ``~``) the proxy forwards: under
    dists/ or pool/, no ``..`` component, no empty one."""
    return bool(ALLOWED.fullmatch(path)) and ".." not in path.split("/") and "//" not in path


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.get().debug("aptproxy.request", line=format % args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _refuse(self, code: int, why: str) -> None:
        data = (why + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        counts = self.server.counts
        counts.add(requests=1)
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)  # checked as the mirror will read it
        if not allowed(path):
            counts.add(refused=1)
            self._refuse(403, "isobuild's apt proxy serves the suite's dists/ and pool/ only")
            return
        cached = self.server.cache / path.lstrip("/") if path.startswith("/pool/") else None
        if cached is not None and cached.is_file():
            counts.add(hits=1)
            self._send_file(cached, body)
            return
        url = self.server.mirror.rstrip("/") + urllib.parse.quote(path)
        try:
            with contextlib.ExitStack() as stack:
                stream = stack.enter_context(_open(url))
                size = stream.size
                if cached is not None and body:
                    self._fetch_into_cache(stream, cached)
                    self._send_file(cached, body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if size is not None:
                    self.send_header("Content-Length", str(size))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if body:
                    for chunk in stream.chunks():
                        self.wfile.write(chunk)
                        counts.add(bytes=len(chunk))
        except FileNotFoundError:
            counts.add(missing=1)
            self._refuse(404, f"{path}: not on the mirror")
        except OSError as exc:
            counts.add(missing=1)
            with contextlib.suppress(OSError):
                self._refuse(502, f"{path}: the mirror did not answer: {exc}")

    def _fetch_into_cache(self, stream: _Stream, cached: Path) -> None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("wb") as out:
                for chunk in stream.chunks():
                    out.write(chunk)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)

    def _send_file(self, path: Path, body: bool) -> None:
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if body:
            with path.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, CHUNK)
            self.server.counts.add(bytes=size)


@dataclass
class _Stream:
    response: object
    size: int | None

    def chunks(self) -> Iterator[bytes]:
        while True:
            data = self.response.read(CHUNK)  # type: ignore[attr-defined]
            if not data:
                return
            yield data


@contextlib.contextmanager
def _open(url: str) -> Iterator[_Stream]:
    if url.startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        if not path.is_file():
            raise FileNotFoundError(url)
        with path.open("rb") as f:
            yield _Stream(f, path.stat().st_size)
        return
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from None
        raise OSError(f"HTTP {exc.code}") from None
    with response:
        length = response.headers.get("Content-Length")
        yield _Stream(response, int(length) if length and length.isdigit() else None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mirror: str
    cache: Path
    counts: Counts


class AptProxy:
    """``with AptProxy(mirror, cache) as proxy:`` -- serving on ``127.0.0.1:proxy.port`` meanwhile."""

    def __init__(self, mirror: str, cache: Path):
        self.mirror = mirror
        self.cache = cache
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.mirror, self.server.cache, self.server.counts = mirror, cache, Counts()
        self.thread = threading.Thread(target=self.server.serve_forever, name="aptproxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def counts(self) -> Counts:
        return self.server.counts

    def __enter__(self) -> AptProxy:
        self.cache.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        log.get().info("aptproxy.start", port=self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        c = self.counts
        log.get().info("aptproxy.stop", requests=c.requests, hits=c.hits, refused=c.refused, bytes=c.bytes)
