"""``isobuild release``: sums and GnuPG signatures over the built ISOs, and
``isobuild release verify``, which checks them.

A release directory (default: the project's ``iso/``) holds
``<distro>/<name>.iso`` with its ``<name>.manifest.json``, a detached
ASCII-armored signature ``<name>.iso.asc`` per ISO, ``SHA256SUMS`` over
every ISO and manifest (paths relative to the directory, sorted: ``cd DIR &&
sha256sum -c SHA256SUMS`` works) and its detached signature
``SHA256SUMS.asc``.  Everything is written under temp names and renamed
into place only once every signature exists, so a failure (a wrong
passphrase, say) leaves the previous release as it was.

gpg runs through the runner in batch mode without a tty; a key that needs a
passphrase gets it from ``$ISOBUILD_GPG_PASSPHRASE`` through a pipe
(``--pinentry-mode loopback --passphrase-fd 0``), never on a command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from builder.infra import runner
from builder.infra.config import Project
from builder.infra.digests import sha256_file
from builder.infra.errors import CheckFailed, InfraError, UserError

SUMS = "SHA256SUMS"
SIG = ".asc"
PASSPHRASE_ENV = "ISOBUILD_GPG_PASSPHRASE"
_SUMS_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
_LIST_HINT = ("list the keys you have: gpg --list-secret-keys --keyid-format long; "
              "import one: gpg --import KEYFILE (or set release.gnupg_home in isobuild.yaml)")


@dataclass(frozen=True)
class Key:
    fingerprint: str
    uid: str

    def describe(self) -> str:
        return f"{self.fingerprint} ({self.uid})" if self.uid else self.fingerprint


@dataclass(frozen=True)
class Gpg:
    """How to call gpg for this project: its home directory and log file."""

    homedir: Path | None
    log_path: Path | None

    def argv(self, *args: str) -> list[str]:
        home = ["--homedir", str(self.homedir)] if self.homedir else []
        return ["gpg", "--batch", "--no-tty", *home, *args]

    def where(self) -> str:
        return str(self.homedir) if self.homedir else os.environ.get("GNUPGHOME", "~/.gnupg")


def gpg_for(project: Project, log_path: Path | None) -> Gpg:
    home = project.settings.release.gnupg_home
    if home is None:
        return Gpg(None, log_path)
    path = project.path(os.path.expanduser(home))
    if not path.is_dir():
        raise UserError(f"{project.config_file.name}: release.gnupg_home: {path} is not a directory",
                        hint="point it at the GnuPG home holding the signing key, or remove it to use ~/.gnupg")
    return Gpg(path, log_path)


def _key_spec(project: Project, given: str | None) -> str | None:
    return given or project.settings.release.key


def find_key(gpg: Gpg, spec: str, secret: bool) -> Key:
    """The one usable key ``spec`` names (a secret key to sign, a public key to verify)."""
    what = "secret" if secret else "public"
    listing = "--list-secret-keys" if secret else "--list-keys"
    result = runner.run(gpg.argv("--with-colons", "--fixed-list-mode", listing, "--", spec),
                        log_path=gpg.log_path, check=False, capture=True)
    keys: list[tuple[str, str, str]] = []  # (validity, capabilities, fingerprint)
    uids: dict[str, str] = {}
    for line in result.output.splitlines():
        fields = line.split(":")
        if fields[0] in ("sec", "pub"):
            keys.append((fields[1], fields[11] if len(fields) > 11 else "", ""))
        elif fields[0] == "fpr" and keys and not keys[-1][2]:
            keys[-1] = (keys[-1][0], keys[-1][1], fields[9])
        elif fields[0] == "uid" and keys and keys[-1][2] not in uids:
            uids[keys[-1][2]] = fields[9]
    if result.returncode != 0 or not keys:
        raise UserError(f"signing key {spec!r}: no {what} key in the GnuPG home {gpg.where()}",
                        hint=_LIST_HINT if secret else "import the release key's public part: gpg --import KEYFILE "
                        "(list what you have: gpg --list-keys)")
    if len(keys) > 1:
        raise UserError(f"signing key {spec!r} matches {len(keys)} {what} keys in {gpg.where()}",
                        details=[f"{fpr} {uids.get(fpr, '')}".rstrip() for _, _, fpr in keys],
                        hint="name one by its fingerprint (release.key or --key)")
    validity, caps, fpr = keys[0]
    if validity in ("e", "r", "d", "i"):
        state = {"e": "expired", "r": "revoked", "d": "disabled", "i": "invalid"}[validity]
        raise UserError(f"signing key {spec!r} ({fpr}) is {state}", hint=_LIST_HINT)
    if "S" not in caps:
        raise UserError(f"signing key {spec!r} ({fpr}) has no usable signing key", hint=_LIST_HINT)
    return Key(fpr, uids.get(fpr, ""))


@contextmanager
def _passphrase_stdin() -> Iterator[tuple[list[str], int]]:
    """gpg options and the stdin that hand over $ISOBUILD_GPG_PASSPHRASE, if set."""
    secret = os.environ.get(PASSPHRASE_ENV)
    if not secret:  # unset, or empty (a CI secret that was never defined)
        yield ["--pinentry-mode", "loopback"], subprocess.DEVNULL  # never a prompt: a key that wants one fails
        return
    read, write = os.pipe()
    try:
        os.write(write, secret.encode())  # far below a pipe's buffer: never blocks
        os.close(write)
        write = -1
        yield ["--pinentry-mode", "loopback", "--passphrase-fd", "0"], read
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def sign(gpg: Gpg, key: Key, path: Path, out: Path) -> None:
    """A detached ASCII-armored signature of ``path``, written to ``out``."""
    with _passphrase_stdin() as (options, stdin):
        argv = gpg.argv("--yes", *options, "--local-user", key.fingerprint, "--armor", "--detach-sign",
                        "--output", str(out), "--", str(path))
        try:
            runner.run(argv, log_path=gpg.log_path, stdin=stdin)
        except runner.CommandFailed as exc:
            out.unlink(missing_ok=True)
            text = "\n".join(exc.tail).lower()
            wants = any(word in text for word in ("passphrase", "batchmode", "pinentry"))
            hint = (f"the key wants a passphrase: set {PASSPHRASE_ENV} (or preset it in gpg-agent)" if wants
                    else _LIST_HINT)
            raise UserError(f"gpg could not sign {path.name} with {key.describe()}", details=exc.tail[-6:],
                            hint=hint) from None


@dataclass
class Signature:
    ok: bool
    signer: str = ""  # primary key fingerprint
    uid: str = ""
    problem: str = ""


def check_signature(gpg: Gpg, sig: Path, data: Path) -> Signature:
    """What gpg says of ``sig`` over ``data`` (from its machine-readable status lines)."""
    result = runner.run(gpg.argv("--status-fd", "1", "--no-auto-key-retrieve", "--verify", "--", str(sig), str(data)),
                        log_path=gpg.log_path, check=False, capture=True)
    status: dict[str, list[str]] = {}
    for line in result.output.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line[len("[GNUPG:] "):].split()
            status.setdefault(word, rest)
    if result.returncode == 0 and "GOODSIG" in status and "VALIDSIG" in status:
        valid = status["VALIDSIG"]
        primary = valid[9] if len(valid) > 9 else valid[0]
        return Signature(True, primary, " ".join(status["GOODSIG"][1:]))
    if "BADSIG" in status:
        return Signature(False, problem="BAD signature (the file or the signature was changed)")
    for word, what in (("EXPKEYSIG", "expired"), ("REVKEYSIG", "revoked")):
        if word in status:
            return Signature(False, problem=f"signed by a {what} key {status[word][0]}")
    if "NO_PUBKEY" in status:
        return Signature(False, problem=f"signed by key {status['NO_PUBKEY'][0]}, which is not in {gpg.where()}")
    if "NODATA" in status:
        return Signature(False, problem="not an OpenPGP signature")
    return Signature(False, problem=f"gpg could not verify it (exit {result.returncode})")


# --- making a release ----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    iso: Path
    manifest: Path
    sha256: dict[Path, str]  # of both, read once


def collect(iso_dir: Path) -> list[Item]:
    """Every ISO in iso/<distro>/ and its manifest; refuses an ISO changed since it was built."""
    found = sorted(p for p in iso_dir.glob("*/*.iso") if not p.name.startswith("."))
    if not found:
        raise UserError(f"no ISOs in {iso_dir}/<distro>/ to release", hint="build one first: isobuild debian")
    items = []
    for iso in found:
        manifest = iso.with_name(iso.stem + ".manifest.json")
        if not manifest.is_file():
            raise UserError(f"{iso}: its manifest {manifest.name} is missing",
                            hint=f"rebuild it: isobuild {iso.parent.name}")
        digest = sha256_file(iso)
        sidecar = iso.with_name(iso.name + ".sha256")
        if sidecar.is_file():  # written by the ISO stage: a mismatch means the ISO changed after it was built
            recorded = sidecar.read_text(encoding="utf-8").split()[:1]
            if recorded and recorded[0] != digest:
                raise CheckFailed(f"{iso} does not match {sidecar.name}: it changed after isobuild built it",
                                  hint=f"rebuild it (isobuild {iso.parent.name}) before releasing it")
        items.append(Item(iso, manifest, {iso: digest, manifest: sha256_file(manifest)}))
    return items


def sums_text(entries: dict[str, str]) -> str:
    """``sha256sum`` format, sorted by path: ``<hex>  <rel>`` per relative path -> sha256."""
    return "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries))


def _tmp(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _place(src: Path, tmp: Path) -> None:
    """``src``'s content at ``tmp``: a hard link when possible (an ISO is large), else a copy."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)


@dataclass
class Release:
    directory: Path
    key: Key
    files: list[Path] = field(default_factory=list)  # every file written, final names


def make(project: Project, key_spec: str | None, out: Path | None, log_path: Path | None) -> Release:
    """Sum and sign every ISO in the project's iso/ into ``out`` (default: iso/ itself)."""
    spec = _key_spec(project, key_spec)
    if not spec:
        raise UserError("no signing key: set release.key in isobuild.yaml or pass --key",
                        hint=_LIST_HINT)
    gpg = gpg_for(project, log_path)
    key = find_key(gpg, spec, secret=True)
    items = collect(project.iso_dir)
    directory = (out or project.iso_dir).resolve()
    in_place = directory == project.iso_dir.resolve()
    staged: list[tuple[Path, Path]] = []  # (temp, final), renamed together at the end
    try:
        listed: dict[str, str] = {}  # path in SHA256SUMS -> sha256
        for item in items:
            for src in (item.iso, item.manifest):
                rel = src.relative_to(project.iso_dir).as_posix()
                listed[rel] = item.sha256[src]
                here = src
                if not in_place:
                    here = _tmp(directory / rel)
                    staged.append((here, directory / rel))
                    _place(src, here)
                if src is item.iso:
                    sig = directory / (rel + SIG)
                    staged.append((_tmp(sig), sig))
                    sign(gpg, key, here, _tmp(sig))
        sums, sums_sig = directory / SUMS, directory / (SUMS + SIG)
        staged.append((_tmp(sums), sums))
        _tmp(sums).write_text(sums_text(listed), encoding="utf-8")
        staged.append((_tmp(sums_sig), sums_sig))
        sign(gpg, key, _tmp(sums), _tmp(sums_sig))
        for tmp, final in staged:  # the sums and their signature last: they never describe files not yet there
            os.replace(tmp, final)
        written = [final for _, final in staged]
        staged.clear()
    except OSError as exc:
        raise InfraError(f"cannot write the release in {directory}: {exc.strerror}") from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return Release(directory, key, written)


# --- verifying one ------------------------------------------------------------------------


def parse_sums(text: str, where: Path) -> list[tuple[str, str]]:
    """(sha256, relative path) per line; a line that is not one, or a path leaving the directory, fails."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        m = _SUMS_LINE.fullmatch(line)
        rel = PurePosixPath(m.group(2)) if m else None
        if m is None or rel is None or rel.is_absolute() or ".." in rel.parts:
            raise CheckFailed(f"{where}:{number}: not a '<sha256>  <relative path>' line: {line[:80]!r}")
        entries.append((m.group(1), m.group(2)))
    return entries


@dataclass
class Verified:
    directory: Path
    signer: str
    uid: str
    files: list[str]


def verify(project: Project, directory: Path | None, key_spec: str | None, log_path: Path | None) -> Verified:
    """Check SHA256SUMS.asc, every listed file's sha256, every ISO's signature; the first problem is named."""
    directory = (directory or project.iso_dir).resolve()
    sums = directory / SUMS
    if not sums.is_file():
        raise UserError(f"{sums}: not found: {directory} is not a release",
                        hint="make one with: isobuild release (or name the release directory)")
    gpg = gpg_for(project, log_path)
    spec = _key_spec(project, key_spec)
    expected = find_key(gpg, spec, secret=False) if spec else None
    problems: list[str] = []

    def signed(sig: Path, data: Path, name: str) -> Signature | None:
        if not sig.is_file():
            problems.append(f"{name}: signature {sig.name} is missing")
            return None
        result = check_signature(gpg, sig, data)
        if not result.ok:
            problems.append(f"{name}: {result.problem}")
        elif expected is not None and result.signer != expected.fingerprint:
            problems.append(f"{name}: signed by {result.signer}, not by the release key {expected.describe()}")
        return result if result.ok else None

    top = signed(sums.with_name(SUMS + SIG), sums, SUMS)
    entries = parse_sums(sums.read_text(encoding="utf-8"), sums)
    for digest, rel in entries:
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch (the file changed after it was released)")
    for _, rel in entries:
        path = directory / rel
        if path.suffix == ".iso" and path.is_file():
            signed(path.with_name(path.name + SIG), path, rel)
    listed = {rel for _, rel in entries}
    for iso in sorted(directory.glob("*/*.iso")):
        rel = iso.relative_to(directory).as_posix()
        if not iso.name.startswith(".") and rel not in listed:
            problems.append(f"{rel}: not listed in {SUMS} (not part of this release)")
    if problems:
        raise CheckFailed(f"release in {directory} does not verify: {problems[0]}", details=problems,
                          hint="re-run isobuild release after rebuilding, or fetch the release again")
    assert top is not None
    return Verified(directory, top.signer, top.uid, [rel for _, rel in entries])
