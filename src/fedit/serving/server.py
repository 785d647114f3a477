"""Run the API with uvicorn on a socket bound up front (so a taken port is a one-line error).

Example:
    sock = bind_socket("127.0.0.1", 8000)
    run_server(create_app(engine), sock)             # blocks until Ctrl-C

    with running_server(app) as url:                 # tests: a free port, in a thread
        httpx.get(f"{url}/health")
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fedit.config import ConfigError

logger = logging.getLogger(__name__)

SERVE_EXTRA = "pip install 'fedit[serve]'"


def require_serve_extra() -> None:
    """Fail with the install command when FastAPI or uvicorn is missing.

    Raises:
        ConfigError: Naming the ``serve`` extra.
    """
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"fedit serve needs {' and '.join(missing)}: install the serve extra with "
            f"`{SERVE_EXTRA}` (make install does)"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)``; port 0 picks a free one.

    Raises:
        ConfigError: The port is taken, out of range, or the host cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"--host: cannot resolve {host!r} ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        reason = (
            "is already in use"
            if err.errno == errno.EADDRINUSE
            else f"cannot be bound ({err.strerror})"
        )
        raise ConfigError(
            f"--port: {host}:{port} {reason}; choose another with --port or stop the other server"
        ) from None
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"))
    return uvicorn.Server(config)


def run_server(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until interrupted (Ctrl-C or SIGTERM)."""
    logger.info("serving on %s (chat page at /, API at /v1)", base_url(sock))
    _uvicorn_server(app, log_level).run(sockets=[sock])


@contextmanager
def running_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    timeout_s: float = 30.0,
) -> Iterator[str]:
    """Serve ``app`` in a background thread for the block; yields its base URL.

    Args:
        app: The ASGI app.
        host: Address to bind when no ``sock`` is given.
        port: Port to bind when no ``sock`` is given (0: a free one).
        sock: An already bound socket (``bind_socket``) to serve on instead.
        timeout_s: How long to wait for startup and shutdown.

    Raises:
        RuntimeError: The server did not start within ``timeout_s``.
    """
    sock = sock or bind_socket(host, port)
    server = _uvicorn_server(app, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {base_url(sock)} did not start")
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()
