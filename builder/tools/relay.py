"""One guest connection carried to a loopback port: the program QEMU's ``guestfwd=...-cmd:`` runs.

A build VM's network is QEMU user-mode with ``restrict=on``: the guest reaches nothing outside
QEMU.  What a package build needs from the host -- the apt proxy for the suite's mirror
(builder.tools.aptproxy) and distccd -- listens on ``127.0.0.1`` only, and the guest reaches it
through a ``guestfwd`` rule on the address ``GUEST_HOST``: for each connection the guest opens
there, QEMU starts this program with the connection on its stdin/stdout, and it copies bytes both
ways to ``127.0.0.1:<port>`` until either side closes.  (A ``guestfwd`` to a ``tcp:`` chardev
carries one connection for the VM's whole life; a command per connection carries any number.)

Only loopback is ever dialled: the one argument is a port.  Standard library only, so QEMU can
run it with the interpreter isobuild runs under, whatever is installed where.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from pathlib import Path

GUEST_HOST = "10.0.2.100"  # an address of QEMU's user-mode network no other service uses
CHUNK = 65536


def command(port: int) -> str:
    """The ``cmd:`` part of a guestfwd rule (QEMU runs it with /bin/sh; a comma in an option value
    is written twice)."""
    text = f"{sys.executable} {Path(__file__).resolve()} {int(port)}"
    if any(c in text for c in "'\"\\$`;&|<>()\n"):
        raise ValueError(f"relay command {text!r}: a path QEMU's shell would split")
    return text.replace(",", ",,")


def guestfwd(guest_port: int, host_port: int) -> str:
    """A ``-netdev user`` option: the guest's ``GUEST_HOST:guest_port`` is the host's loopback ``host_port``."""
    return f"guestfwd=tcp:{GUEST_HOST}:{int(guest_port)}-cmd:{command(host_port)}"


def pump(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    """Copy fd_in -> sock and sock -> fd_out until both directions are closed."""
    open_in, open_sock = True, True
    while open_in or open_sock:
        wanted = ([fd_in] if open_in else []) + ([sock] if open_sock else [])
        ready, _, _ = select.select(wanted, [], [])
        if fd_in in ready:
            data = os.read(fd_in, CHUNK)
            if data:
                sock.sendall(data)
            else:
                open_in = False
                sock.shutdown(socket.SHUT_WR)
        if sock in ready:
            data = sock.recv(CHUNK)
            if data:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd_out, view):]
            else:
                open_sock = False
                if not open_in:
                    break
                # the server finished: the guest sees end of stream; what it still sends has nowhere to go
                return


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or not 0 < int(argv[0]) < 65536:
        print("usage: relay.py PORT  (connects stdin/stdout to 127.0.0.1:PORT)", file=sys.stderr)
        return 2
    try:
        sock = socket.create_connection(("127.0.0.1", int(argv[0])), timeout=30)
    except OSError as exc:
        print(f"relay: 127.0.0.1:{argv[0]}: {exc}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    with sock:
        try:
            pump(sock, 0, 1)
        except (BrokenPipeError, ConnectionResetError):
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
