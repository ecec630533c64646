"""The lock file's format, an apt simulation's parsing, the pins and the comparisons."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.infra.errors import UserError
from builder.tools import aptlock
from builder.tools.aptlock import Pin

SIMULATION = """I: running apt-get update...
Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])
Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst libc6:arm64 (2.36-9+deb12u14 Debian:12.15/oldstable [arm64])
Inst adduser (3.134 Debian:12.15/oldstable [all])
Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
I: success in 5.4 seconds
"""


def test_an_apt_simulation_gives_name_version_and_arch() -> None:
    section = aptlock.parse_simulation(SIMULATION)
    assert section["gcc-12-base"] == Pin("gcc-12-base", "12.2.0-14+deb12u1", "amd64")
    assert section["adduser"] == Pin("adduser", "3.134", "all")
    assert set(section) == {"gcc-12-base", "libc6", "adduser"}


def test_write_then_read_keeps_every_section_sorted(tmp_path: Path) -> None:
    path = tmp_path / "debian.lock"
    a = {"zlib1g": Pin("zlib1g", "1:1.2.13.dfsg-1", "amd64"), "adduser": Pin("adduser", "3.134", "all"),
         aptlock.REQUEST: aptlock.request("bookworm", ["main"], ["zstd", "live-boot"])}
    b = {"libc6": Pin("libc6", "2.41-12", "riscv64")}
    aptlock.write(path, {("debian", "amd64"): a, ("debian", "riscv64"): b})
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["debian amd64 @request bookworm:main live-boot,zstd", "debian amd64 adduser 3.134 all",
                     "debian amd64 zlib1g 1:1.2.13.dfsg-1 amd64", "debian riscv64 libc6 2.41-12 riscv64"]
    assert aptlock.read(path) == {("debian", "amd64"): a, ("debian", "riscv64"): b}
    assert aptlock.read(tmp_path / "none.lock") == {}


@pytest.mark.parametrize(("line", "message"), [
    ("debian amd64 libc6 2.36\n", r"debian.lock:2: not 'ROOT ARCH PACKAGE VERSION PACKAGE-ARCH'"),
    ("debian amd64 Libc6 2.36 amd64\n", r"debian.lock:2: not"),
    ("debian amd64 libc6 x.y amd64\n", r"debian.lock:2: not"),
    ("debian amd64 adduser 3.1 all\n", r"debian.lock:2: adduser is locked twice for debian amd64"),
])
def test_a_malformed_lock_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "debian.lock"
    path.write_text("debian amd64 adduser 3.134 all\n" + line)
    with pytest.raises(UserError, match=message):
        aptlock.read(path)


def test_preferences_pin_every_package_and_not_the_request() -> None:
    section = {"libc6": Pin("libc6", "2.36-9", "amd64"), aptlock.REQUEST: aptlock.request("bookworm", ["main"], [])}
    assert aptlock.preferences(section) == "Package: libc6\nPin: version 2.36-9\nPin-Priority: 1001\n\n"


def test_differences_and_changes_in_words() -> None:
    lock = {"a": Pin("a", "1", "all"), "b": Pin("b", "2", "all"), aptlock.REQUEST: aptlock.request("s", ["m"], [])}
    assert aptlock.differences(lock, {"a": "1", "b": "2"}) == []
    assert aptlock.differences(lock, {"a": "1.1", "c": "3"}) == [
        "a is 1.1 in the root, 1 in the lock", "c 3 is in the root, not in the lock"]
    new = {"a": Pin("a", "1.1", "all"), "c": Pin("c", "3", "all")}
    assert aptlock.changes(lock, new) == ["  a 1 -> 1.1", "- b 2", "+ c 3"]


def test_the_digest_changes_with_any_version_only() -> None:
    one = {"a": Pin("a", "1", "all")}
    assert aptlock.digest(one) == aptlock.digest(dict(one))
    assert aptlock.digest(one) != aptlock.digest({"a": Pin("a", "1.1", "all")})
