"""A loopback TCP relay in front of a server, which the suite can take down and bring back: the
server going away and returning, as a client sees it, without owning the server process
(``clair-vec backends --check`` runs the suite against a live deployment)."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

_SCHEMES = ("http", "grpc", "tcp")
_TLS = ("https", "grpcs")


def relay_target(uri: str | None) -> tuple[str, int] | str:
    """Where a server URI points (host, port), or why the relay cannot stand in front of it."""
    if not uri or "://" not in uri:
        return "an embedded store (backend_uri is not a server URI): there is no server to lose"
    parts = urlsplit(uri)
    if parts.scheme in _TLS:
        return (f"a TLS server ({parts.scheme}://): a relay on 127.0.0.1 would not match its certificate; check "
                "reconnection against a plain-text endpoint of the same engine")  # fmt: skip
    if parts.scheme not in _SCHEMES or not parts.hostname or not parts.port:
        return f"the relay needs a server URI with an explicit port ({'/'.join(_SCHEMES)}://host:port)"
    return parts.hostname, parts.port


class Relay:
    """Forwards every connection on a loopback port to ``host:port``. :meth:`stop` refuses new
    connections and cuts the open ones (what a client sees when its server dies); :meth:`start`
    listens again on the same port (the server is back)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def uri(self, uri: str) -> str:
        """``uri`` pointed at the relay instead of the server; credentials and path kept."""
        parts = urlsplit(uri)
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=(userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"))

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True, name="conformance-relay").start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            cut, self._open = list(self._open), set()
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stopped
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="conformance-relay-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open -= {src, dst}
            src.close()
