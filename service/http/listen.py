"""Can this process listen on ``host:port``? Asked before anything starts, so a taken port
or a bad address is one clear message naming the setting, not a failure after start-up."""

from __future__ import annotations

import errno
import socket


def bind_error(host: str, port: int) -> OSError | None:
    """Bind ``host:port`` the way uvicorn will (``SO_REUSEADDR``, first address of the name)
    and release it; the error, or None when it is free. A name that does not resolve is a
    ``socket.gaierror`` (an OSError)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return exc if isinstance(exc, OSError) else socket.gaierror(str(exc))
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc
    return None


def port_taken(exc: OSError) -> bool:
    """The address is fine, the port is not (in use, or privileged)."""
    return exc.errno in (errno.EADDRINUSE, errno.EACCES)


def listen_problem(host: str, port: int, host_var: str, port_var: str) -> str | None:
    """One line saying which setting to change, or None when ``host:port`` is free."""
    exc = bind_error(host, port)
    if exc is None:
        return None
    reason = exc.strerror or str(exc)
    if port_taken(exc):
        return (
            f"port {port} on {host} is not available ({reason}): another program listens "
            f"there; choose a free port with {port_var}, e.g. {port_var}={_suggest(host, port)}"
        )
    return (
        f"cannot listen on {host!r} ({reason}): set {host_var} to a local address, e.g. 127.0.0.1"
    )


def _suggest(host: str, port: int) -> int:
    """A nearby port that is free now (for the message only)."""
    for candidate in range(port + 10, min(port + 200, 65535), 10):
        if bind_error(host, candidate) is None:
            return candidate
    return 0
