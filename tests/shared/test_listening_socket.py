"""The HTTP socket a service hands uvicorn (``shared.natsd.listening_socket``)."""

from __future__ import annotations

import socket

from shared.natsd import listening_socket


def test_the_socket_says_it_is_tcp_and_turns_nagle_off() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's
    protocol is IPPROTO_TCP; without it each kept-alive response waited for a delayed ACK."""
    sock = listening_socket("127.0.0.1", 0, "RTOPS_TEST_HTTP_PORT")
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
