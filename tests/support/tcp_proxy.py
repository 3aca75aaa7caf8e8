"""A TCP forwarder the tests can cut: a network partition between a client and a real server.

Nothing is imitated: bytes go to the real server and back. ``cut()`` closes every open
connection and answers new ones by closing them at once, as a partition or a server that went
away does for its clients; ``restore()`` forwards again.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

CHUNK = 1 << 16


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (host, port) until ``close()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection, and each new one as soon as it is made."""
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed.set()
        self.cut()
        _close(self._listener)
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                refused = self._cut  # cut while this connection was being made
                if not refused:
                    self._open |= {client, server}
            if refused:
                _close(client)
                _close(server)
                continue
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        pair = {client: server, server: client}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):  # cut: the sockets were closed under us
            return
        finally:
            with self._lock:
                self._open -= {client, server}
            _close(client)
            _close(server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def tcp_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()
