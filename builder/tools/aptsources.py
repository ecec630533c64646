"""The host's apt sources: where the default Debian mirror comes from.

isobuild never names an archive host itself.  The mirror for a suite is read
from the host's apt configuration -- deb822 ``/etc/apt/sources.list.d/*.sources``
and one-line ``/etc/apt/sources.list`` (and ``*.list``) -- unless the user sets
one in the distro file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.infra.errors import UserError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class Source:
    types: tuple[str, ...]
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: str  # file:line, for messages

    def serves(self, suite: str) -> bool:
        return "deb" in self.types and suite in self.suites


def _deb822(path: Path) -> list[Source]:
    out: list[Source] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    line_no = 1
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            line_no += stanza.count("\n") + 2
            continue
        for uri in fields.get("uris", "").split():
            out.append(Source(tuple(fields.get("types", "").split()), uri.rstrip("/"),
                              tuple(fields.get("suites", "").split()), tuple(fields.get("components", "").split()),
                              f"{path}:{line_no}"))
        line_no += stanza.count("\n") + 2
    return out


def _one_line(path: Path) -> list[Source]:
    out: list[Source] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]\s*", "", line)  # options like [arch=amd64 signed-by=...]
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("deb", "deb-src"):
            continue
        out.append(Source((parts[0],), parts[1].rstrip("/"), (parts[2],), tuple(parts[3:]), f"{path}:{number}"))
    return out


def host_sources(apt_dir: Path = APT_DIR) -> list[Source]:
    sources: list[Source] = []
    if (apt_dir / "sources.list").exists():
        sources += _one_line(apt_dir / "sources.list")
    for path in sorted((apt_dir / "sources.list.d").glob("*")):
        if path.suffix == ".sources":
            sources += _deb822(path)
        elif path.suffix == ".list":
            sources += _one_line(path)
    return sources


def default_mirror(suite: str, apt_dir: Path = APT_DIR) -> str:
    """The URI the host's apt uses for ``suite`` (e.g. bookworm)."""
    for source in host_sources(apt_dir):
        if source.serves(suite):
            return source.uri
    raise UserError(f"the host's apt configuration ({apt_dir}/sources.list*) has no 'deb' source for suite {suite!r}",
                    hint="set 'mirror:' in distros/debian.yaml to a Debian mirror URI")


def archive_mirror(suite: str, apt_dir: Path = APT_DIR) -> str:
    """A Debian archive URI for ``suite``: the host's source for it, else the URI the host uses for
    its own release (an archive serves every release, and the suite's signed InRelease is checked
    whatever the URI): a bookworm host fetches trixie's riscv64 packages from its own mirror."""
    sources = host_sources(apt_dir)
    for source in sources:
        if source.serves(suite):
            return source.uri
    for source in sources:
        if "deb" in source.types and "main" in source.components and \
                any(re.fullmatch(r"[a-z]+", s) for s in source.suites):
            return source.uri
    raise UserError(f"the host's apt configuration ({apt_dir}/sources.list*) has no Debian archive source "
                    f"to fetch {suite} packages from",
                    hint="set kernel.boot.mirror (or the distro file's 'mirror:') to a Debian mirror URI")


def host_codename(os_release: Path = Path("/etc/os-release")) -> str | None:
    """This host's release codename (bookworm), from os-release; None when it names none."""
    try:
        text = os_release.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=\"?([a-z0-9-]+)\"?\s*$", text, re.M)
    return m.group(1) if m else None
