"""A Debian archive, read the way apt reads it: nothing is trusted that the
suite's signed ``InRelease`` does not vouch for.

``release()`` fetches ``dists/<suite>/InRelease`` and checks its signature
with ``gpgv`` against the archive keyring (Debian's ``debian-archive-keyring``
by default); ``index()`` fetches a ``Packages`` or ``Sources`` index and checks
it against the sha256 the release lists; ``fetch()`` downloads a pool file and
checks it against the sha256 the index lists, keeping it in a cache by sha256.
A mismatch anywhere is refused and nothing is cached.  The mirror itself comes
from the host's apt configuration or the settings (``builder.tools.aptsources``):
isobuild never names an archive host.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from builder.infra import atomic, runner
from builder.infra.errors import InfraError, UserError

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_TIMEOUT = 30.0


def _get(url: str, timeout: float = _TIMEOUT) -> bytes:
    if url.startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(url) from None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from None
        raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 file (Packages, Sources, Release); continuation lines joined with newlines."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def checksums(text: str) -> dict[str, tuple[str, int]]:
    """A Checksums-Sha256 / SHA256 field: name -> (sha256, size)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            out[parts[2]] = (parts[0], int(parts[1]))
    return out


@dataclass
class Release:
    mirror: str
    suite: str
    fields: dict[str, str]
    files: dict[str, tuple[str, int]]  # path under dists/<suite>/ -> (sha256, size)
    sha256: str  # of InRelease itself: changes with every update of the suite
    architectures: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"{self.mirror.rstrip('/')}/dists/{self.suite}"


def release(mirror: str, suite: str, keyring: Path = DEBIAN_KEYRING, where: str = "the mirror",
            log_path: Path | None = None) -> Release:
    """The suite's InRelease, signature checked; InfraError when unreachable, UserError when the
    mirror has no such suite or the signature is not the keyring's."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/InRelease"
    try:
        data = _get(url)
    except FileNotFoundError:
        raise UserError(f"{where}: the mirror {mirror} has no suite {suite!r} (no dists/{suite}/InRelease)",
                        hint="fix 'suite' (or 'mirror') in the distro settings") from None
    except (OSError, ValueError) as exc:
        raise InfraError(f"the Debian mirror {mirror} is unreachable: {_reason(exc)}",
                         hint=f"check the network, or set 'mirror:' in {where}") from None
    if not keyring.is_file():
        raise InfraError(f"{keyring}: archive keyring not found", hint="apt-get install debian-archive-keyring")
    with tempfile.TemporaryDirectory(prefix="isobuild-release-") as tmp:
        signed, text_path = Path(tmp) / "InRelease", Path(tmp) / "Release"
        signed.write_bytes(data)
        result = runner.run(["gpgv", "--keyring", str(keyring), "--output", str(text_path), str(signed)],
                            log_path=log_path, check=False, capture=True)
        if result.returncode != 0 or not text_path.exists():
            raise UserError(f"{url}: the signature does not verify against {keyring}",
                            hint="a mirror serving something else, or a keyring that does not match it: set "
                                 "'keyring:' in the distro settings",
                            details=result.output.strip().splitlines()[-3:])
        text = text_path.read_text(encoding="utf-8", errors="replace")
    stanzas = parse_deb822(text)
    fields = stanzas[0] if stanzas else {}
    return Release(mirror, suite, fields, checksums(fields.get("SHA256", "")),
                   hashlib.sha256(data).hexdigest(), fields.get("Architectures", "").split(),
                   fields.get("Components", "").split())


def require(rel: Release, arch: str | None, components: list[str], where: str) -> None:
    """The suite serves ``arch`` and ``components`` (UserError naming suite, arch and mirror)."""
    if arch is not None and rel.architectures and arch not in rel.architectures:
        raise UserError(f"{where}: suite {rel.suite} on {rel.mirror} has no {arch} packages "
                        f"(it has {', '.join(a for a in rel.architectures if a != 'all')})",
                        hint="choose a suite that has this architecture (riscv64: trixie or later)")
    missing = [c for c in components if rel.components and c not in rel.components]
    if missing:
        raise UserError(f"{where}: suite {rel.suite} on {rel.mirror} has no component {', '.join(missing)}",
                        hint=f"its components: {', '.join(rel.components)}")


def index(rel: Release, component: str, arch: str, cache: Path) -> list[dict[str, str]]:
    """The Packages (``arch``) or Sources (``arch='source'``) index, checked against the release."""
    stem = f"{component}/source/Sources" if arch == "source" else f"{component}/binary-{arch}/Packages"
    for suffix in (".xz", ""):
        name = stem + suffix
        if name not in rel.files:
            continue
        sha, size = rel.files[name]
        path = fetch(f"{rel.base}/{name}", sha, size, cache, what=f"{rel.suite} {name}")
        raw = path.read_bytes()
        text = (lzma.decompress(raw) if suffix == ".xz" else raw).decode("utf-8", errors="replace")
        return parse_deb822(text)
    raise UserError(f"suite {rel.suite} on {rel.mirror} lists no {stem} index",
                    hint="check the suite, component and architecture")


class Missing(InfraError):
    """A file the signed index lists that the mirror does not serve (404)."""


def fetch(url: str, sha256: str, size: int | None, cache: Path, what: str) -> Path:
    """``url`` in the cache by sha256: downloaded once, refused (and not kept) if its sha256 differs."""
    cached = cache / sha256[:2] / sha256
    if cached.is_file():
        return cached
    try:
        data = _get(url)
    except FileNotFoundError:
        raise Missing(f"{what}: {url} is listed but missing on the mirror (404)",
                         hint="the mirror is being updated: retry later") from None
    except (OSError, ValueError) as exc:
        raise InfraError(f"{what}: cannot download {url}: {_reason(exc)}", hint="check the network") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256 or (size is not None and len(data) != size):
        raise UserError(f"{what}: {url} has sha256 {got} ({len(data)} bytes); the signed index says {sha256}"
                        + (f" ({size} bytes)" if size is not None else "") + "; refused, nothing cached",
                        hint="a mirror serving modified files, or one caught mid-update: retry, or use another")
    atomic.write_bytes(cached, data)
    os.utime(cached)
    return cached


def package(rel: Release, component: str, arch: str, name: str, cache: Path) -> dict[str, str]:
    """The newest stanza of binary package ``name`` for ``arch`` (UserError naming suite and arch if absent)."""
    found = [s for s in index(rel, component, arch, cache / "indexes") if s.get("Package") == name]
    if not found:
        raise UserError(f"package {name} not found in {rel.suite}/{component} for {arch} on {rel.mirror}")
    return max(found, key=lambda s: _version_key(s.get("Version", "")))


def _version_key(version: str) -> list[object]:
    """Good enough to pick the newest of several stanzas of one package (dpkg decides everywhere else)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def deb(rel: Release, component: str, arch: str, name: str, cache: Path) -> Path:
    """A binary package's .deb, verified through InRelease -> Packages -> sha256, cached by sha256."""
    stanza = package(rel, component, arch, name, cache)
    return fetch(f"{rel.mirror.rstrip('/')}/{stanza['Filename']}", stanza["SHA256"], int(stanza["Size"]),
                 cache / "pool", what=f"{name} {stanza.get('Version')} ({arch})")


@dataclass(frozen=True)
class SourcePackage:
    name: str
    version: str
    directory: str
    files: dict[str, tuple[str, int]]  # name -> (sha256, size)


def source_versions(rel: Release, component: str, name: str, cache: Path) -> list[SourcePackage]:
    """Every version of source package ``name`` the signed Sources index lists, newest first (an
    index also lists older ones still in the pool for Built-Using); UserError when there is none."""
    stanzas = [s for s in index(rel, component, "source", cache / "indexes") if s.get("Package") == name]
    if not stanzas:
        raise UserError(f"source package {name} not found in {rel.suite}/{component} on {rel.mirror}",
                        hint=f"check the name (apt-cache showsrc {name} on a {rel.suite} system)")
    stanzas.sort(key=lambda s: _version_key(s.get("Version", "")), reverse=True)
    return [SourcePackage(name, s["Version"], s["Directory"], checksums(s.get("Checksums-Sha256", "")))
            for s in stanzas]


def source(rel: Release, component: str, name: str, cache: Path, version: str | None = None) -> SourcePackage:
    """Source package ``name`` (its newest, or ``version``) from the signed Sources index."""
    found = [s for s in source_versions(rel, component, name, cache) if version is None or s.version == version]
    if not found:
        raise UserError(f"source package {name} {version} not found in {rel.suite}/{component} on {rel.mirror}",
                        hint=f"check the name (apt-cache showsrc {name} on a {rel.suite} system)")
    return found[0]


def fetch_dsc(rel: Release, src: SourcePackage, cache: Path) -> Path:
    """The .dsc of ``src``, verified and cached by sha256 (``Missing`` when the mirror lacks it)."""
    dsc = next((f for f in src.files if f.endswith(".dsc")), None)
    if dsc is None or "/" in dsc:
        raise UserError(f"source package {src.name} {src.version}: no .dsc in the index entry")
    sha, size = src.files[dsc]
    return fetch(f"{rel.mirror.rstrip('/')}/{src.directory}/{dsc}", sha, size, cache / "pool",
                 what=f"source {src.name} {src.version}")


def fetch_source(rel: Release, src: SourcePackage, cache: Path, dest: Path) -> Path:
    """Every file of ``src`` (verified, cached by sha256) hard-linked or copied into ``dest``;
    returns the .dsc."""
    dest.mkdir(parents=True, exist_ok=True)
    dsc = None
    for fname, (sha, size) in sorted(src.files.items()):
        if "/" in fname or fname.startswith("."):
            raise UserError(f"source package {src.name}: the index names a file {fname!r}; refused")
        path = fetch(f"{rel.mirror.rstrip('/')}/{src.directory}/{fname}", sha, size, cache / "pool",
                     what=f"source {src.name} {src.version}")
        target = dest / fname
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            atomic.copy_file(path, target)
        if fname.endswith(".dsc"):
            dsc = target
    if dsc is None:
        raise UserError(f"source package {src.name} {src.version}: no .dsc in the index entry")
    return dsc
