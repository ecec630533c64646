"""isobuild pkg's parts that run processes but no VM: the guestfwd relay program between a socket and
a loopback server, the registry that stops every background process on Ctrl-C."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.commands import pkg
from builder.infra import runner
from builder.tools import aptrepo, pkglist, relay
from tests.fakemirror import Mirror


def test_registry_stops_everything_on_cancel(tmp_path: Path) -> None:
    registry = pkg.Registry()
    sleeper = runner.spawn(["sleep", "60"], log_path=tmp_path / "s.log")
    registry.add(sleeper)
    registry.stop_all()
    assert not sleeper.alive
    late = runner.spawn(["sleep", "60"], log_path=tmp_path / "late.log")
    registry.add(late)  # a process started after Ctrl-C is stopped at once
    assert not late.alive


def test_ctrl_c_stopping_a_vm_its_build_already_stopped_and_cleaned_is_no_error(tmp_path: Path) -> None:
    # the race seen in a full test run: Ctrl-C reached a build thread (stop, scratch tree removed)
    # before the main thread's stop_all came to the same QEMU, whose log was in that tree
    registry = pkg.Registry()
    scratch = tmp_path / "scratch"
    sleeper = runner.spawn(["sleep", "60"], log_path=scratch / "qemu.log")
    registry.add(sleeper)
    assert sleeper.stop() == -15
    assert (scratch / "qemu.log").read_text().count("[stopped: exit -15") == 1
    shutil.rmtree(scratch)
    registry.stop_all()
    assert sleeper.stop() == -15 and not scratch.exists()


def test_a_log_that_cannot_take_the_note_does_not_keep_the_others_running(tmp_path: Path) -> None:
    registry = pkg.Registry()
    first = runner.spawn(["sleep", "60"], log_path=tmp_path / "a" / "qemu.log")
    second = runner.spawn(["sleep", "60"], log_path=tmp_path / "b" / "qemu.log")
    registry.add(first)
    registry.add(second)
    shutil.rmtree(tmp_path / "a")  # its note has nowhere to go (as on a full disk: an OSError)
    shutil.rmtree(tmp_path / "b")
    registry.stop_all()
    assert not first.alive and not second.alive


def test_concurrent_stops_stop_once(tmp_path: Path) -> None:
    sleeper = runner.spawn(["sleep", "60"], log_path=tmp_path / "s.log")
    threads = [threading.Thread(target=sleeper.stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not sleeper.alive
    assert (tmp_path / "s.log").read_text().count("[stopped:") == 1


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


@dataclass
class _Suite:
    suite: str
    release: aptrepo.Release

    def mirror(self) -> str:
        return self.release.mirror

    def keyring(self) -> Path:
        return Path("/nonexistent")


def test_a_version_the_mirror_lacks_falls_back_to_an_older_one_the_index_lists(tmp_path: Path) -> None:
    """A mirror can lag behind its own signed index (here: trixie listed point-release sources whose files
    were not there yet): the newest version served whole is taken; a version asked for is not replaced."""
    mirror = Mirror.create(tmp_path / "mirror")
    for version in ("1.0-1", "1.0-2"):
        mirror.add_source("trixie", "lag", version, {f"lag_{version}.dsc": f"dsc {version}\n".encode(),
                                                     f"lag_{version}.tar.xz": f"tar {version}\n".encode()})
    (mirror.root / "pool" / "main" / "l" / "lag" / "lag_1.0-2.tar.xz").unlink()
    mirror.publish("trixie")
    suite = _Suite("trixie", aptrepo.release(mirror.uri, "trixie", mirror.keyring))
    cache = tmp_path / "cache"
    source = pkg.archive_source(suite, ["main"], pkglist.parse_entry("lag", "t"), cache)
    assert source.version == "1.0-1" and set(source.identity["files"]) == {"lag_1.0-1.dsc", "lag_1.0-1.tar.xz"}
    with pytest.raises(aptrepo.Missing, match=r"lag_1.0-2.tar.xz"):
        pkg.archive_source(suite, ["main"], pkglist.parse_entry("lag=1.0-2", "t"), cache)
    (mirror.root / "pool" / "main" / "l" / "lag" / "lag_1.0-1.tar.xz").unlink()
    with pytest.raises(aptrepo.Missing, match=r"lag_1.0-2.tar.xz"):  # none whole: the newest is named
        pkg.archive_source(suite, ["main"], pkglist.parse_entry("lag", "t"), tmp_path / "cache2")
