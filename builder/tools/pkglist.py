"""The package list: which source packages ``isobuild pkg build`` builds when given no names.

One entry per line; ``#`` starts a comment; blank lines are kept as they are::

    hello                      # the suite's newest hello (from the mirror's signed Sources index)
    zlib=1:1.2.13.dfsg-1       # that exact version
    ./src/mytool               # an unpacked source tree (debian/ inside), relative to the project
    ./vendor/foo_1.0-1.dsc     # a local source package (its files beside it, checked against it)

``pkg add``/``pkg remove`` rewrite the file through a temp name (comments and order kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.infra import atomic, state
from builder.infra.errors import UserError

SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION = re.compile(r"([0-9]+:)?[0-9][A-Za-z0-9.+~-]*")


@dataclass(frozen=True)
class Entry:
    """``kind``: archive (a name, maybe a version, from the mirror), dsc (a local .dsc) or dir (a tree)."""

    text: str
    kind: str
    name: str  # the source name (for dsc/dir: read from the file when resolved; here the path's stem)
    version: str | None = None
    path: str | None = None


def parse_entry(text: str, where: str) -> Entry:
    """One entry (a list line without its comment, or a ``pkg build``/``pkg add`` argument)."""
    text = text.strip()
    if text.startswith(("./", "../", "/")) or text.endswith(".dsc"):
        if text.endswith(".dsc"):
            stem = Path(text).name.split("_", 1)[0]
            return Entry(text, "dsc", stem, path=text)
        return Entry(text, "dir", Path(text.rstrip("/")).name, path=text)
    name, _, version = text.partition("=")
    if not SOURCE_NAME.fullmatch(name):
        raise UserError(f"{where}: {text!r} is not a source package name (lowercase a-z 0-9 + . -), a .dsc or a "
                        "./directory", hint="e.g. hello, zlib=1:1.2.13.dfsg-1, ./src/mytool, ./foo_1.0-1.dsc")
    if version and not VERSION.fullmatch(version):
        raise UserError(f"{where}: {text!r}: {version!r} is not a Debian version", hint="e.g. hello=2.10-3")
    return Entry(text, "archive", name, version or None)


def read(path: Path) -> list[Entry]:
    """The list's entries (a missing file is an empty list); UserError naming file:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the package list: {exc}") from None
    out: list[Entry] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) != 1:
            raise UserError(f"{path}:{number}: {text!r}: one package per line",
                            hint="a name, name=version, a .dsc or a ./directory")
        entry = parse_entry(text, f"{path}:{number}")
        if entry.name in seen:
            raise UserError(f"{path}:{number}: {entry.name} is listed twice (line {seen[entry.name]} too)",
                            hint="keep one line per source package")
        seen[entry.name] = number
        out.append(entry)
    return out


def add(path: Path, entries: list[Entry]) -> list[Entry]:
    """Append entries not listed yet (an entry naming a listed package replaces its line); returns the added."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = ["# isobuild pkg build: one source package per line (name, name=version, ./dir or ./x.dsc)"]
    current = {e.name: e for e in read(path)}
    added = []
    for entry in entries:
        old = current.get(entry.name)
        if old is not None and old.text == entry.text:
            continue
        if old is not None:
            lines = [entry.text if line.split("#", 1)[0].strip() == old.text else line for line in lines]
        else:
            lines.append(entry.text)
        current[entry.name] = entry
        added.append(entry)
    atomic.write_text(path, "\n".join(lines) + "\n")
    return added


def remove(path: Path, names: list[str]) -> list[str]:
    """Drop the lines of these source packages (UserError naming one that is not listed)."""
    listed = {e.name: e for e in read(path)}
    missing = [n for n in names if n not in listed]
    if missing:
        raise UserError(f"{path}: {', '.join(missing)} not listed",
                        hint=f"listed: {', '.join(listed) or 'nothing'}")
    drop = {listed[n].text for n in names}
    lines = path.read_text(encoding="utf-8").splitlines()
    atomic.write_text(path, "\n".join(line for line in lines if line.split("#", 1)[0].strip() not in drop) + "\n")
    return names


def shard(entries: list[Entry], spec: str | None) -> list[Entry]:
    """``--shard I/N`` (1-based, CI's node index/total): every N-th entry from the I-th."""
    if not spec:
        return entries
    m = re.fullmatch(r"([1-9][0-9]*)/([1-9][0-9]*)", spec)
    if not m or int(m.group(1)) > int(m.group(2)):
        raise UserError(f"--shard {spec!r}: expected I/N with 1 <= I <= N (e.g. 2/4)")
    index, total = int(m.group(1)), int(m.group(2))
    return entries[index - 1::total]


# --- what pkg build made: <work>/pkgs/<arch>/<source>/<version>/ with record.json --------------------------

RECORD = "record.json"


@dataclass(frozen=True)
class BuiltDeb:
    package: str  # the binary package's name
    path: Path
    sha256: str
    source: str
    version: str
    built: str  # when (the record's timestamp)


def built_debs(work_dir: Path, arch: str) -> dict[str, BuiltDeb]:
    """Every binary package ``pkg build`` made for ``arch``, by name (the newest build of each)."""
    out: dict[str, BuiltDeb] = {}
    for record_path in sorted((work_dir / "pkgs" / arch).glob(f"*/*/{RECORD}")):
        record = state.load(record_path) or {}
        sums = record.get("sha256", {})
        for deb in record.get("debs", []):
            name = str(deb).split("_", 1)[0]
            path = record_path.parent / str(deb)
            if not path.is_file() or deb not in sums:
                continue
            found = BuiltDeb(name, path, str(sums[deb]), record_path.parent.parent.name, str(record.get("version")),
                             str(record.get("built", "")))
            if name not in out or found.built > out[name].built:
                out[name] = found
    return out
