"""A store of built stage artifacts shared by machines: a plain directory (a mounted volume, the path
a CI system caches between runners), entries by stage kind and key.

    <store>/<kind>/<key>/artifact.tar     the artifact directory, a deterministic tar (sorted names,
                                          owner 0, the files' own modes and mtimes)
    <store>/<kind>/<key>/manifest.json    kind, key, the tar's sha256 and size, and every member:
                                          type, mode, and for a file its size and sha256

An entry appears whole or not at all (made under a temp name in ``<kind>/``, renamed into place).
A pull checks before anything is used: the manifest names this kind and key, the tar's sha256 is
the manifest's, every member is a plain file, directory or symlink that stays inside the artifact,
each file's bytes hash to the manifest's sha256 as they are written, and nothing is missing or
extra; the artifact is unpacked under a temp name beside its final place and renamed there only
then.  Anything else is ``Refused`` -- the caller builds instead.

The manifest proves the tar is the one pushed; on its own it cannot prove who pushed it (whoever
can write the store can rewrite both).  With a secret shared by the machines that trust each other
(``ISOBUILD_CACHE_SECRET``: a CI secret), a push also writes ``manifest.hmac`` -- HMAC-SHA256 of the
manifest's bytes under it -- and a pull refuses an entry whose HMAC is missing or does not match,
before the manifest is even parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from builder.infra import atomic
from builder.infra.errors import InfraError

FORMAT = 1
TAR = "artifact.tar"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.hmac"
SECRET_ENV = "ISOBUILD_CACHE_SECRET"
_CHUNK = 1 << 20


class Refused(InfraError):
    """A store entry that failed verification: it is not used."""


@dataclass(frozen=True)
class Entry:
    kind: str
    key: str
    path: Path
    size: int


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_of(artifact: Path) -> dict[str, dict[str, Any]]:
    """Every member of an artifact directory by relative POSIX path (sorted): type, mode, size, sha256."""
    members: dict[str, dict[str, Any]] = {}
    for item in sorted(artifact.rglob("*")):
        rel = item.relative_to(artifact).as_posix()
        st = item.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(item)
            if not _inside(rel, target):
                raise InfraError(f"{item}: a symlink to {target}, outside the artifact; an artifact holding it cannot "
                                 "be stored")
            members[rel] = {"type": "symlink", "target": target}
        elif stat.S_ISDIR(st.st_mode):
            members[rel] = {"type": "dir", "mode": mode}
        elif stat.S_ISREG(st.st_mode):
            members[rel] = {"type": "file", "mode": mode, "size": st.st_size, "sha256": _file_sha256(item)}
        else:
            raise InfraError(f"{item}: not a file, directory or symlink; an artifact holding it cannot be stored")
    return members


def secret_from_env() -> bytes | None:
    """The secret that signs and checks entries (``ISOBUILD_CACHE_SECRET``), or None: unsigned."""
    value = os.environ.get(SECRET_ENV, "")
    return value.encode() if value else None


def _mac(secret: bytes, manifest: bytes) -> str:
    return hmac.new(secret, manifest, hashlib.sha256).hexdigest()


class Store:
    def __init__(self, root: Path, secret: bytes | None = None):
        self.root = root
        self.secret = secret  # set: entries are signed on push, and a pull takes signed ones only

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return (self.entry_dir(kind, key) / MANIFEST).is_file()

    def entries(self) -> list[Entry]:
        out = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            tar = manifest.parent / TAR
            size = tar.stat().st_size if tar.is_file() else 0
            out.append(Entry(manifest.parent.parent.name, manifest.parent.name, manifest.parent, size))
        return out

    # --- push -------------------------------------------------------------------------------------

    def push(self, kind: str, key: str, artifact: Path) -> bool:
        """The artifact directory stored as this kind and key; False when the store has it already."""
        if self.has(kind, key):
            return False
        members = manifest_of(artifact)
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=atomic.temp_prefix(parent / key), suffix=".tmp", dir=parent))
        try:
            tar_path = tmp / TAR
            with tar_path.open("wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in members:
                    _add(tar, artifact / rel, rel)
            manifest = {"format": FORMAT, "kind": kind, "key": key,
                        "tar": {"sha256": _file_sha256(tar_path), "size": tar_path.stat().st_size},
                        "members": members}
            text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
            (tmp / MANIFEST).write_bytes(text)
            if self.secret is not None:
                (tmp / SIGNATURE).write_text(_mac(self.secret, text) + "\n")
            try:
                os.rename(tmp, self.entry_dir(kind, key))
            except OSError:
                if not self.has(kind, key):  # another runner's push won the race: theirs stands
                    raise
        except OSError as exc:
            raise InfraError(f"cannot push {kind} {key[:12]} into the stage store {self.root}: "
                             f"{exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    # --- pull -------------------------------------------------------------------------------------

    def pull(self, kind: str, key: str, dest: Path) -> bool:
        """The entry unpacked as the artifact directory ``dest`` once every check passed; False when
        the store has no such entry; ``Refused`` when it fails a check (``dest`` untouched)."""
        entry = self.entry_dir(kind, key)
        if not (entry / MANIFEST).is_file():
            return False
        where = f"stage store entry {entry}"
        try:
            text = (entry / MANIFEST).read_bytes()
        except OSError as exc:
            raise Refused(f"{where}: unreadable manifest ({exc.strerror or exc})") from exc
        if self.secret is not None:
            self._check_signature(entry, text, where)
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise Refused(f"{where}: unreadable manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("kind") != kind \
                or manifest.get("key") != key or not isinstance(manifest.get("members"), dict):
            raise Refused(f"{where}: its manifest is not one of {kind} {key[:12]}")
        tar_path = entry / TAR
        try:
            got = _file_sha256(tar_path)
        except OSError as exc:
            raise Refused(f"{where}: {TAR} unreadable ({exc.strerror or exc})") from exc
        if got != manifest.get("tar", {}).get("sha256"):
            raise Refused(f"{where}: {TAR} has sha256 {got[:16]}…, its manifest says "
                          f"{str(manifest.get('tar', {}).get('sha256'))[:16]}… (changed since it was pushed)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=atomic.temp_prefix(dest), suffix=".tmp", dir=dest.parent))
        try:
            _unpack(tar_path, tmp, manifest["members"], where)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():  # a concurrent pull or build put it there first: that one stands
                    raise
        except OSError as exc:
            raise InfraError(f"cannot unpack {where} into {dest}: {exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def _check_signature(self, entry: Path, manifest: bytes, where: str) -> None:
        assert self.secret is not None
        try:
            signed = (entry / SIGNATURE).read_text().strip()
        except FileNotFoundError:
            raise Refused(f"{where}: not signed ({SIGNATURE} missing) and {SECRET_ENV} is set: "
                          "only entries signed with that secret are taken") from None
        except OSError as exc:
            raise Refused(f"{where}: {SIGNATURE} unreadable ({exc.strerror or exc})") from exc
        if not hmac.compare_digest(signed, _mac(self.secret, manifest)):
            raise Refused(f"{where}: its manifest's HMAC does not match {SECRET_ENV} "
                          "(changed since it was pushed, or pushed with another secret)")

    def discard(self, kind: str, key: str) -> None:
        """An entry removed (one that failed verification, before a good build replaces it)."""
        entry = self.entry_dir(kind, key)
        if entry.is_dir():
            doomed = entry.with_name(f".{key}.{os.getpid()}.discard.tmp")
            os.rename(entry, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _add(tar: tarfile.TarFile, path: Path, rel: str) -> None:
    """One member, owner 0; a file with other hard links stored as a file of its own."""
    info = tar.gettarinfo(str(path), arcname=rel)
    if info.islnk():
        info.type, info.linkname, info.size = tarfile.REGTYPE, "", path.stat().st_size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isreg():
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and p.as_posix() == name


def _inside(link_rel: str, target: str) -> bool:
    """A symlink at ``link_rel`` pointing at ``target`` stays inside the artifact."""
    if target.startswith("/"):
        return False
    depth = len(PurePosixPath(link_rel).parent.parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _copy_hashed(src: IO[bytes], dst: Path, mode: int) -> str:
    h = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
    os.chmod(dst, mode)
    return h.hexdigest()


def _unpack(tar_path: Path, into: Path, members: dict[str, dict[str, Any]], where: str) -> None:
    """Every member written by hand (never tarfile's extract): checked against the manifest first."""
    seen: set[str] = set()
    mtimes: list[tuple[Path, float]] = []
    with tarfile.open(tar_path, mode="r:") as tar:
        for info in tar:
            name = info.name
            want = members.get(name)
            if not _safe_member(name) or want is None or name in seen:
                raise Refused(f"{where}: member {name!r} is not in its manifest (or not a plain relative path)")
            seen.add(name)
            target = into / name
            if not target.parent.is_dir() or target.parent.is_symlink():
                raise Refused(f"{where}: member {name!r} comes before its directory")
            if info.isdir() and want["type"] == "dir":
                target.mkdir(mode=0o700)
                mtimes.append((target, info.mtime))
            elif info.issym() and want["type"] == "symlink":
                if info.linkname != want.get("target") or not _inside(name, info.linkname):
                    raise Refused(f"{where}: symlink {name!r} -> {info.linkname!r} leaves the artifact or differs "
                                  "from its manifest")
                os.symlink(info.linkname, target)
            elif info.isfile() and want["type"] == "file":
                src = tar.extractfile(info)
                if src is None:
                    raise Refused(f"{where}: member {name!r} has no data")
                got = _copy_hashed(src, target, int(want["mode"]) & 0o7777 & ~0o6000)
                if got != want.get("sha256"):
                    raise Refused(f"{where}: {name} has sha256 {got[:16]}…, its manifest says "
                                  f"{str(want.get('sha256'))[:16]}…")
                os.utime(target, (info.mtime, info.mtime))
            else:
                raise Refused(f"{where}: member {name!r} is a {_kind(info)}, its manifest says {want['type']}")
    missing = sorted(set(members) - seen)
    if missing:
        raise Refused(f"{where}: {len(missing)} member(s) of its manifest missing from {TAR}, first {missing[0]}")
    for directory, mtime in sorted(mtimes, reverse=True):  # deepest first: a child's write moves its parent's
        os.chmod(directory, int(members[directory.relative_to(into).as_posix()]["mode"]) & 0o7777 & ~0o6000)
        os.utime(directory, (mtime, mtime))


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.isfile():
        return "file"
    return "special file (device, fifo or hard link)"
