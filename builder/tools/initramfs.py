"""A minimal busybox initramfs, written as a newc cpio from Python.

Writing the archive ourselves needs no root: device nodes such as
``/dev/console`` (which the kernel opens for init's stdio before anything is
mounted) are just header fields.  Entries are sorted and their mtimes fixed,
so the same inputs give the same bytes.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from builder.infra import atomic
from builder.infra.errors import InfraError

BUSYBOX = Path("/bin/busybox")
_PT_INTERP = 3


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading slash
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, e: Entry, mtime: int) -> bytes:
    name = e.path.encode() + b"\0"
    fields = (ino, e.mode, 0, 0, 1, mtime, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    return head + name + b"\0" * ((-(len(head) + len(name))) % 4)


def cpio(entries: list[Entry], mtime: int = 0) -> bytes:
    out = bytearray()
    for ino, e in enumerate(sorted(entries, key=lambda x: x.path), start=1):
        out += _header(ino, e, mtime)
        out += e.data + b"\0" * (-len(e.data) % 4)
    out += _header(0, Entry("TRAILER!!!", 0), 0)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def is_static_elf(data: bytes) -> bool:
    """True for an ELF64 little-endian executable without a PT_INTERP header."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != _PT_INTERP for i in range(phnum))


def init_script(marker_file: str) -> str:
    """/init: mount the API filesystems, print the markers the host waits for, power off."""
    return f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "ISOBUILD-UNAME $(/bin/busybox uname -r)"
if [ -r {marker_file} ]; then
  echo "ISOBUILD-MARKER $(/bin/busybox cat {marker_file})"
else
  echo "ISOBUILD-MARKER-MISSING {marker_file}"
fi
echo ISOBUILD-DONE
/bin/busybox poweroff -f
"""


def busybox_initramfs(dest: Path, marker_file: str, busybox: Path = BUSYBOX) -> None:
    try:
        binary = busybox.read_bytes()
    except FileNotFoundError:
        raise InfraError(f"{busybox} not found", hint="apt-get install busybox-static") from None
    if not is_static_elf(binary):
        raise InfraError(f"{busybox} is dynamically linked and cannot run alone in an initramfs",
                         hint="apt-get install busybox-static (it replaces Debian's dynamic busybox)")
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG
    entries = [Entry(name, d) for name in ("bin", "dev", "proc", "sys", "tmp")]
    entries += [
        Entry("bin/busybox", f | 0o755, binary),
        Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        Entry("init", f | 0o755, init_script(marker_file).encode()),
    ]
    atomic.write_bytes(dest, cpio(entries))
