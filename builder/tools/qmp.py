"""A minimal QMP client: QEMU's machine protocol over the UNIX socket a VM was started with.

A socket path is limited to 108 bytes and a work dir can be deep, so QEMU binds ``qmp.sock``
relative to the VM's directory (its working directory) and this client reaches it through
``/proc/self/fd/<dir fd>/qmp.sock``, whatever the directory's length.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from builder.infra.errors import InfraError


class QmpError(InfraError):
    pass


def execute(socket_path: Path, command: str, arguments: dict[str, Any] | None = None,
            timeout: float = 10.0) -> dict[str, Any]:
    """Run one QMP command and return its ``return`` value; a QmpError when QEMU does not answer
    or answers with an error."""
    dfd = os.open(socket_path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{socket_path.name}")
            except OSError as exc:
                raise QmpError(f"{socket_path}: QEMU's QMP socket does not answer ({exc.strerror})") from None
            stream = sock.makefile("rwb")
            _read(stream, socket_path)  # the greeting
            for name, args in (("qmp_capabilities", None), (command, arguments)):
                message: dict[str, Any] = {"execute": name, **({"arguments": args} if args else {})}
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                reply = _read(stream, socket_path)
                if "error" in reply:
                    raise QmpError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
            return dict(reply.get("return") or {})
    except TimeoutError:
        raise QmpError(f"{socket_path}: QEMU did not answer within {timeout:.0f} s") from None
    finally:
        os.close(dfd)


def _read(stream: Any, where: Path) -> dict[str, Any]:
    """The next reply or greeting (asynchronous events are skipped)."""
    while True:
        line = stream.readline()
        if not line:
            raise QmpError(f"{where}: QEMU closed the QMP connection")
        message = json.loads(line)
        if "event" not in message:
            return dict(message)
