"""A small threaded TCP forwarder on loopback, for fault-injection tests."""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["TcpProxy"]

_LISTEN_HOST: Final = "127.0.0.1"
_BUFSIZE: Final = 65536
_ABORT_GRACE: Final = 0.25  # seconds for link threads to notice an abort before forcing them
_JOIN_TIMEOUT: Final = 5.0


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _set_nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _arm_reset(sock: socket.socket) -> None:
    """Make the next close() send a RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _shutdown(sock: socket.socket | None, how: int) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(how)


class _Link:
    """One forwarded connection: client <-> proxy <-> server."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.aborted = False
        self.finished = False  # sockets closed (by the link thread)
        self.thread: threading.Thread | None = None


class TcpProxy:
    """A threaded TCP forwarder from ``127.0.0.1:<free port>`` to ``(host, port)``.

    Meant to sit between a client and a local PostgreSQL server to simulate network
    faults. Only loopback addresses are accepted as target, and it only listens on
    ``127.0.0.1``.

    - :meth:`reset_all`: abruptly close (RST) every forwarded connection, both sides;
      new connections are still accepted.
    - :meth:`pause`: close every forwarded connection and reset new ones as soon as
      they are accepted (connection attempts fail fast) until :meth:`resume`.
    - :meth:`blackhole`: a network cut: existing connections stay open but nothing is
      forwarded any more (in either direction), new connections are accepted but hang.
      :meth:`resume` heals it: what was held back is then delivered, like TCP
      retransmission after a transient outage.

    All the threads are daemon threads; :meth:`close` is quick and joins them. Usable as
    a context manager (``__enter__`` starts the proxy, ``__exit__`` closes it).

    :param host: the target host (must resolve to loopback addresses only).
    :param port: the target port.
    :param connect_timeout: timeout, in seconds, for connecting to the target.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"invalid target port: {port}")
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos or not all(_is_loopback(str(info[4][0])) for info in infos):
            raise ValueError(f"TcpProxy only forwards to loopback addresses, not {host!r}")
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # PostgreSQL: 127.0.0.1 first
        family, _type, _proto, _canon, sockaddr = infos[0]
        self._target_family = family
        self._target_addr = sockaddr
        self.target_host = host
        self.target_port = port
        self._connect_timeout = connect_timeout

        self._cond = threading.Condition()
        self._links: set[_Link] = set()
        self._paused = False
        self._blackholed = False
        self._closed = False
        self._started = False
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    @classmethod
    def for_dsn(cls, dsn: str, *, connect_timeout: float = 5.0) -> TcpProxy:
        """A proxy to the host and port of *dsn* (default port 5432)."""
        params = conninfo_to_dict(dsn)
        host = str(params.get("hostaddr") or params.get("host") or _LISTEN_HOST)
        port = int(str(params.get("port") or 5432))
        return cls(host, port, connect_timeout=connect_timeout)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (on ``127.0.0.1``, free port) and forwarding. Idempotent."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this TcpProxy is closed")
            if self._started:
                return
            listener = socket.create_server((_LISTEN_HOST, 0), backlog=128)
            listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
            self._listener = listener
            self._accept_thread = threading.Thread(
                target=self._accept_loop,
                name=f"TcpProxy-accept-{self.port}",
                daemon=True,
            )
            self._started = True
            self._accept_thread.start()

    def close(self) -> None:
        """Stop listening, reset every forwarded connection and join all the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._abort_links()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        port = self._listener.getsockname()[1] if self._listener is not None else "?"
        return (
            f"<{type(self).__name__} 127.0.0.1:{port} -> {self.target_host}:{self.target_port}"
            f" connections={len(self._links)}"
            f"{' paused' if self._paused else ''}{' blackholed' if self._blackholed else ''}>"
        )

    # ---- addresses --------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on: ``127.0.0.1``."""
        return _LISTEN_HOST

    @property
    def port(self) -> int:
        """The port the proxy listens on (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._listener.getsockname()[1]
        return port

    def dsn_for(self, dsn: str) -> str:
        """*dsn* with its host and port replaced by the proxy's (``hostaddr`` removed)."""
        params = conninfo_to_dict(dsn)
        params.pop("hostaddr", None)
        params["host"] = _LISTEN_HOST
        params["port"] = str(self.port)
        return make_conninfo("", **params)

    @property
    def active_connections(self) -> int:
        """The number of connections currently being forwarded (or held)."""
        with self._cond:
            return len(self._links)

    # ---- faults -----------------------------------------------------------------------

    def reset_all(self) -> None:
        """Abruptly close every forwarded connection, on both sides (TCP RST).

        Returns once they are closed. New connections are still accepted.
        """
        self._abort_links()

    def pause(self) -> None:
        """Close every forwarded connection; reset new ones at once, until :meth:`resume`."""
        with self._cond:
            self._paused = True
        self._abort_links()

    def blackhole(self) -> None:
        """Stop forwarding anything (in both directions) while keeping connections open.

        New connections are accepted and hang. Undone by :meth:`resume`.
        """
        with self._cond:
            self._blackholed = True

    def resume(self) -> None:
        """Undo :meth:`pause` and :meth:`blackhole`: accept and forward normally again."""
        with self._cond:
            self._paused = False
            self._blackholed = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force."""
        return self._paused

    @property
    def blackholed(self) -> bool:
        """Whether :meth:`blackhole` is in force."""
        return self._blackholed

    # ---- internals --------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self._closed:
                for key, _events in selector.select(timeout=1.0):
                    if key.fileobj is wake or self._closed:
                        return
                    self._accept_one(listener)

    def _accept_one(self, listener: socket.socket) -> None:
        try:
            client, _addr = listener.accept()
        except OSError:  # BlockingIOError, ECONNABORTED, ...
            return
        client.setblocking(True)
        link = _Link(client)
        link.thread = threading.Thread(
            target=self._run_link, args=(link,), name=f"TcpProxy-link-{self.port}", daemon=True
        )
        with self._cond:
            refuse = self._paused or self._closed
            if not refuse:
                self._links.add(link)
        if refuse:
            _arm_reset(client)
            client.close()
            return
        link.thread.start()

    def _run_link(self, link: _Link) -> None:
        server: socket.socket | None = None
        try:
            server = socket.socket(self._target_family, socket.SOCK_STREAM)
            try:
                server.settimeout(self._connect_timeout)
                server.connect(self._target_addr)
                server.settimeout(None)
            except OSError:  # target down: the client gets a reset
                with self._cond:
                    link.aborted = True
                return
            with self._cond:
                link.server = server
                aborted = link.aborted
            if aborted:
                return
            _set_nodelay(link.client)
            _set_nodelay(server)
            back = threading.Thread(
                target=self._pump,
                args=(link, server, link.client),
                name=f"TcpProxy-pump-{self.port}",
                daemon=True,
            )
            back.start()
            self._pump(link, link.client, server)
            back.join()
        finally:
            with self._cond:  # closing under the lock: _abort() never sees a stale socket
                self._links.discard(link)
                link.finished = True
                for sock in (link.client, server):
                    if sock is not None:
                        if link.aborted:
                            _arm_reset(sock)
                        sock.close()
                self._cond.notify_all()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(_BUFSIZE)
            except OSError:  # e.g. ECONNRESET: pass the reset on
                self._abort(link)
                return
            with self._cond:
                while self._blackholed and not link.aborted and not self._closed:
                    self._cond.wait()
                if link.aborted or self._closed:
                    return
            if not data:  # orderly EOF: pass the half-close on
                _shutdown(dst, socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                self._abort(link)
                return

    def _abort(self, link: _Link) -> None:
        with self._cond:
            if link.aborted or link.finished:
                return
            link.aborted = True
            self._cond.notify_all()
            # SHUT_RD wakes up the pump threads blocked in recv() without sending anything;
            # the link thread then closes both sockets with SO_LINGER 0: the peers get a RST.
            _shutdown(link.client, socket.SHUT_RD)
            _shutdown(link.server, socket.SHUT_RD)

    def _abort_links(self) -> None:
        with self._cond:
            links = list(self._links)
        for link in links:
            self._abort(link)
        deadline = time.monotonic() + _ABORT_GRACE
        forced = False
        for link in links:
            thread = link.thread
            if thread is None:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and not forced:
                # A pump stuck in sendall() (peer not reading): shut down the write sides too.
                forced = True
                with self._cond:
                    for stuck in links:
                        if not stuck.finished:
                            _shutdown(stuck.client, socket.SHUT_RDWR)
                            _shutdown(stuck.server, socket.SHUT_RDWR)
            if thread.is_alive():
                thread.join(_JOIN_TIMEOUT)
