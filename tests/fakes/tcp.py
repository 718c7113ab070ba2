"""A loopback TCP forwarder that a test can cut: between the relay and PostgreSQL, it makes
storage go away (the open connections close, new ones are closed at once, as when the database
restarts or the network fails) and come back, without touching the server other tests share.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """`with TcpProxy(host, port) as proxy:` forwards 127.0.0.1:`proxy.port` to host:port.

    One daemon thread accepts; each connection has a thread per direction. `__exit__` closes
    every socket and joins every thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut = False
        self._closing = False
        self._carried: set[socket.socket] = set()  # both ends of every forwarded connection
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._closing = True
        # Closing a listening socket does not wake a thread blocked in accept(); a connection does.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        self._acceptor.join(5)
        self._listener.close()
        self._drop_all()
        for thread in self._threads:
            thread.join(5)

    def cut(self) -> None:
        """Close every connection carried, and from now on each new one as soon as it comes."""
        with self._lock:
            self._cut = True
        self._drop_all()

    def restore(self) -> None:
        """Forward new connections again (those cut stay closed, as after a real outage)."""
        with self._lock:
            self._cut = False

    def _drop_all(self) -> None:
        # shutdown, not close: it wakes the threads blocked in recv() on these sockets, which
        # then close them (closing a socket another thread uses could close a reused fd).
        with self._lock:
            carried = list(self._carried)
        for sock in carried:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closing:
                    client.close()
                    return
                if self._cut:
                    client.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return  # the client sees its connection close, as if the server were down
            with upstream:
                upstream.settimeout(None)
                with self._lock:
                    if self._cut or self._closing:  # cut while this one was connecting
                        return
                    self._carried.update((client, upstream))
                back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
                back.start()
                self._pump(client, upstream)
                back.join()
                with self._lock:
                    self._carried.difference_update((client, upstream))

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction until it ends; pass an end of stream on, a failure to both."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
