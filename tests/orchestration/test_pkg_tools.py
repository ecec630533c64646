"""isobuild pkg's parts that run processes but no VM: the guestfwd relay program between a socket and
a loopback server, the registry that stops every background process on Ctrl-C."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from builder.commands import pkg
from builder.infra import runner
from builder.tools import relay


def test_registry_stops_everything_on_cancel(tmp_path: Path) -> None:
    registry = pkg.Registry()
    sleeper = runner.spawn(["sleep", "60"], log_path=tmp_path / "s.log")
    registry.add(sleeper)
    registry.stop_all()
    assert not sleeper.alive
    late = runner.spawn(["sleep", "60"], log_path=tmp_path / "late.log")
    registry.add(late)  # a process started after Ctrl-C is stopped at once
    assert not late.alive


def test_relay_carries_bytes_both_ways_to_a_loopback_server(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data.upper())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    payload = b"distcc job " * 20000
    out = subprocess.run([sys.executable, str(Path(relay.__file__)), str(port)], input=payload, capture_output=True,
                         timeout=30, check=True)
    assert out.stdout == payload.upper()
    server.close()


def test_relay_refuses_anything_but_a_port() -> None:
    out = subprocess.run([sys.executable, str(Path(relay.__file__)), "10.0.2.2:80"], capture_output=True, timeout=30,
                         check=False)
    assert out.returncode == 2
