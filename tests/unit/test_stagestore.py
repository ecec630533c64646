"""The shared stage store's format: push and pull round trip, and every way an entry is refused
before anything of it is used."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.infra.errors import InfraError
from builder.tools import stagestore
from builder.tools.stagestore import Refused, Store

KEY = "ab" * 32


def _artifact(root: Path) -> Path:
    art = root / "artifact"
    (art / "modules" / "lib").mkdir(parents=True)
    (art / "bzImage").write_bytes(os.urandom(4096))
    (art / "metadata.json").write_text(json.dumps({"key": KEY}))
    (art / "modules" / "lib" / "fake.ko").write_bytes(b"\x7fELF module")
    os.chmod(art / "modules" / "lib" / "fake.ko", 0o600)
    (art / "modules" / "lib" / "link").symlink_to("fake.ko")
    os.link(art / "bzImage", art / "bzImage.hard")  # a hard link is stored as a file of its own
    os.utime(art / "bzImage", (1_700_000_000, 1_700_000_000))
    return art


def _tree(path: Path) -> dict[str, tuple[str, int, bytes | str]]:
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            out[rel] = ("l", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("d", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def test_push_then_pull_gives_the_same_tree(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    store = Store(tmp_path / "store")
    assert store.push("kernel", KEY, art) is True
    assert store.push("kernel", KEY, art) is False  # already there
    assert [(e.kind, e.key) for e in store.entries()] == [("kernel", KEY)]
    dest = tmp_path / "work" / "kernel" / "artifacts" / KEY
    assert store.pull("kernel", KEY, dest) is True
    assert _tree(dest) == _tree(art)
    assert (dest / "bzImage").stat().st_mtime == 1_700_000_000
    assert not (dest / "bzImage.hard").samefile(dest / "bzImage")
    assert store.pull("kernel", "cd" * 32, tmp_path / "other") is False
    assert not (tmp_path / "other").exists()
    assert [p.name for p in dest.parent.iterdir()] == [KEY], "no temp left beside it"


def test_the_tar_is_the_same_bytes_for_the_same_tree(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    a.push("kernel", KEY, art)
    b.push("kernel", KEY, art)
    tar = stagestore.TAR
    assert (a.entry_dir("kernel", KEY) / tar).read_bytes() == (b.entry_dir("kernel", KEY) / tar).read_bytes()
    with tarfile.open(a.entry_dir("kernel", KEY) / tar) as t:
        assert {(m.uid, m.gid, m.uname) for m in t} == {(0, 0, "")}


def _pushed(tmp_path: Path) -> tuple[Store, Path]:
    store = Store(tmp_path / "store")
    store.push("kernel", KEY, _artifact(tmp_path))
    return store, store.entry_dir("kernel", KEY)


def _refused(store: Store, tmp_path: Path, match: str) -> None:
    dest = tmp_path / "work" / KEY
    with pytest.raises(Refused, match=match):
        store.pull("kernel", KEY, dest)
    assert not dest.exists() and not list(dest.parent.glob("*")), "nothing of a refused entry is left"


def test_a_changed_byte_in_the_tar_is_refused(tmp_path: Path) -> None:
    store, entry = _pushed(tmp_path)
    data = bytearray((entry / stagestore.TAR).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (entry / stagestore.TAR).write_bytes(bytes(data))
    _refused(store, tmp_path, r"artifact.tar has sha256 .*its manifest says .*changed since it was pushed")


def _rewrite(entry: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
             manifest_members: dict[str, dict[str, object]]) -> None:
    """An entry whose tar and manifest agree with each other (as a forger's would): each member must
    still pass on its own."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    (entry / stagestore.TAR).write_bytes(buf.getvalue())

    manifest = json.loads((entry / stagestore.MANIFEST).read_text())
    manifest["tar"] = {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "size": len(buf.getvalue())}
    manifest["members"] = manifest_members
    (entry / stagestore.MANIFEST).write_text(json.dumps(manifest))


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def test_a_file_whose_bytes_differ_from_its_manifest_is_refused(tmp_path: Path) -> None:
    store, entry = _pushed(tmp_path)

    _rewrite(entry, [_file("bzImage", b"evil")],
             {"bzImage": {"type": "file", "mode": 0o644, "size": 4, "sha256": hashlib.sha256(b"good").hexdigest()}})
    _refused(store, tmp_path, r"bzImage has sha256 .*its manifest says")


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "a/../../escape", "./bzImage"])
def test_a_member_outside_the_artifact_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    store, entry = _pushed(tmp_path)

    _rewrite(entry, [_file(name, b"x")],
             {name: {"type": "file", "mode": 0o644, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}})
    _refused(store, tmp_path, r"not in its manifest \(or not a plain relative path\)")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "escape").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "a/../../x"])
def test_a_symlink_leaving_the_artifact_is_refused(tmp_path: Path, target: str) -> None:
    store, entry = _pushed(tmp_path)
    info = tarfile.TarInfo("link")
    info.type, info.linkname = tarfile.SYMTYPE, target
    _rewrite(entry, [(info, None)], {"link": {"type": "symlink", "target": target}})
    _refused(store, tmp_path, r"symlink 'link' -> .* leaves the artifact")


def test_a_file_written_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    store, entry = _pushed(tmp_path)

    link = tarfile.TarInfo("d")
    link.type, link.linkname = tarfile.SYMTYPE, "."
    _rewrite(entry, [(link, None), _file("d/f", b"x")],
             {"d": {"type": "symlink", "target": "."},
              "d/f": {"type": "file", "mode": 0o644, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}})
    _refused(store, tmp_path, r"'d/f' comes before its directory")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.LNKTYPE])
def test_devices_fifos_and_hard_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    store, entry = _pushed(tmp_path)
    info = tarfile.TarInfo("dev")
    info.type = kind
    info.linkname = "bzImage" if kind == tarfile.LNKTYPE else ""
    _rewrite(entry, [(info, None)], {"dev": {"type": "file", "mode": 0o644, "size": 0, "sha256": ""}})
    _refused(store, tmp_path, r"'dev' is a special file .*its manifest says file")


def test_a_member_missing_from_the_tar_or_a_manifest_of_another_key_is_refused(tmp_path: Path) -> None:
    store, entry = _pushed(tmp_path)
    manifest = json.loads((entry / stagestore.MANIFEST).read_text())
    manifest["members"]["extra"] = {"type": "dir", "mode": 0o755}
    (entry / stagestore.MANIFEST).write_text(json.dumps(manifest))
    _refused(store, tmp_path, r"1 member\(s\) of its manifest missing from artifact.tar, first extra")
    manifest["key"] = "ef" * 32
    (entry / stagestore.MANIFEST).write_text(json.dumps(manifest))
    _refused(store, tmp_path, r"its manifest is not one of kernel abababababab")
    (entry / stagestore.MANIFEST).write_text("{not json")
    _refused(store, tmp_path, r"unreadable manifest")


def test_an_artifact_with_a_symlink_out_of_it_is_not_pushed(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    (art / "build").symlink_to("/root/.cache/isobuild/kernel/trees/ci/build")
    store = Store(tmp_path / "store")
    with pytest.raises(InfraError, match=r"build: a symlink to /root/.*outside the artifact"):
        store.push("kernel", KEY, art)
    assert not store.has("kernel", KEY) and not list((tmp_path / "store").rglob("*"))


def test_discard_removes_an_entry(tmp_path: Path) -> None:
    store, entry = _pushed(tmp_path)
    store.discard("kernel", KEY)
    assert not entry.exists() and store.entries() == []


def test_with_a_secret_a_forged_entry_is_refused_that_its_manifest_alone_would_pass(tmp_path: Path) -> None:
    """A forger who can write the store rewrites tar and manifest to agree: the manifest alone takes
    it; with ISOBUILD_CACHE_SECRET the manifest's HMAC does not match and it is refused unread."""
    art = _artifact(tmp_path)
    signed = Store(tmp_path / "store", secret=b"ci secret")
    signed.push("kernel", KEY, art)
    entry = signed.entry_dir("kernel", KEY)
    assert (entry / stagestore.SIGNATURE).is_file()
    assert signed.pull("kernel", KEY, tmp_path / "good") and _tree(tmp_path / "good") == _tree(art)
    evil = b"#!/bin/sh\necho owned\n"
    _rewrite(entry, [_file("bzImage", evil)],
             {"bzImage": {"type": "file", "mode": 0o644, "size": len(evil),
                          "sha256": hashlib.sha256(evil).hexdigest()}})
    assert Store(tmp_path / "store").pull("kernel", KEY, tmp_path / "unsigned")  # the manifest alone: taken
    with pytest.raises(Refused, match=r"its manifest's HMAC does not match ISOBUILD_CACHE_SECRET"):
        signed.pull("kernel", KEY, tmp_path / "forged")
    assert not (tmp_path / "forged").exists()


def test_with_a_secret_unsigned_or_otherwise_signed_entries_are_refused(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    Store(tmp_path / "plain").push("kernel", KEY, art)
    with pytest.raises(Refused, match=r"not signed \(manifest.hmac missing\) and ISOBUILD_CACHE_SECRET is set"):
        Store(tmp_path / "plain", secret=b"s").pull("kernel", KEY, tmp_path / "a")
    Store(tmp_path / "other", secret=b"theirs").push("kernel", KEY, art)
    with pytest.raises(Refused, match="HMAC does not match"):
        Store(tmp_path / "other", secret=b"ours").pull("kernel", KEY, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_secret_comes_from_the_environment_and_empty_means_unsigned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBUILD_CACHE_SECRET", "x")
    assert stagestore.secret_from_env() == b"x"
    monkeypatch.setenv("ISOBUILD_CACHE_SECRET", "")
    assert stagestore.secret_from_env() is None
