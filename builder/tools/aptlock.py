"""A distro's lock: the exact package versions its bootstrapped root holds, per root and arch.

``distros/<distro>.lock`` (next to the distro's settings, in the project, meant to be committed)::

    # isobuild lock: ...
    debian amd64 adduser 3.134 all
    debian amd64 apt 2.6.1 amd64
    debian.vm arm64 ...

one line per package: the root (``debian``; a build VM's is ``debian.vm``), the Debian arch, the
package, its version and its own arch, sorted; and per section one ``@request`` line: the suite and
components, and the packages asked for, that the section was resolved from (a change to them is
named before a build, with the command that refreshes the lock).  A build with a section for its root and arch
bootstraps exactly those versions (an apt preferences file pins each, priority 1001) and checks
the root it got against them; a section is resolved -- by ``mmdebstrap --simulate`` against the
mirror, in seconds, before anything is built -- only when it is missing or refreshed on purpose
(``isobuild lock``).  So the mirror moving on changes nothing until the lock is refreshed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.infra import atomic, keys
from builder.infra.errors import UserError

HEADER = ("# isobuild lock: the exact package versions of each bootstrapped root (root, Debian arch,\n"
          "# package, version, package arch). Written when a root has no section; refreshed only by\n"
          "# isobuild lock DISTRO. Commit it: the same lock gives the same root.\n")
# apt-get --simulate (mmdebstrap --simulate --verbose): "Inst libc6 (2.36-9+deb12u4 Debian:12.5/stable [amd64]) []"
_INST = re.compile(r"^Inst (?P<name>[a-z0-9][a-z0-9+.-]*)(?::\S+)? \((?P<version>\S+) .*\[(?P<arch>[a-z0-9-]+)\]\)",
                   re.M)
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*")
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
REQUEST = "@request"  # the pseudo-package whose "version" is SUITE:COMPONENTS and "arch" the packages asked for


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    arch: str  # the package's own: amd64, all, ...


Section = dict[str, Pin]  # package name -> pin


def read(path: Path) -> dict[tuple[str, str], Section]:
    """Every section of a lock file by (root, Debian arch); {} when there is no file.  A malformed
    line is a UserError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable lock ({exc})", hint="restore it from version control or delete it "
                        "and run isobuild lock") from None
    return parse(text, path)


def parse(text: str, path: Path) -> dict[tuple[str, str], Section]:
    """A lock file's text (``path`` names it in errors)."""
    out: dict[tuple[str, str], Section] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        if len(words) != 5 or (words[2] != REQUEST and (not _NAME.fullmatch(words[2])
                                                        or not _VERSION.fullmatch(words[3]))):
            raise UserError(f"{path}:{number}: not 'ROOT ARCH PACKAGE VERSION PACKAGE-ARCH': {line.strip()!r}",
                            hint="fix the line, or refresh the lock: isobuild lock DISTRO")
        root, arch, name, version, own = words
        section = out.setdefault((root, arch), {})
        if name in section:
            raise UserError(f"{path}:{number}: {name} is locked twice for {root} {arch}")
        section[name] = Pin(name, version, own)
    return out


def write(path: Path, sections: dict[tuple[str, str], Section]) -> None:
    """The whole lock file, sorted (through a temp name)."""
    lines = [f"{root} {arch} {p.name} {p.version} {p.arch}"
             for (root, arch), section in sorted(sections.items()) for p in sorted(section.values(), key=_by_name)]
    atomic.write_text(path, HEADER + "\n".join(lines) + ("\n" if lines else ""))


def _by_name(pin: Pin) -> str:
    return pin.name


def request(suite: str, components: list[str], packages: list[str]) -> Pin:
    """The ``@request`` line of a section resolved for these settings."""
    return Pin(REQUEST, f"{suite}:{','.join(components)}", ",".join(sorted(packages)))


def pins(section: Section) -> list[Pin]:
    """The section's packages (its ``@request`` aside), by name."""
    return sorted((p for p in section.values() if p.name != REQUEST), key=_by_name)


def digest(section: Section) -> str:
    """What a root's key takes of its lock section."""
    return keys.compute({"pins": [[p.name, p.version, p.arch] for p in sorted(section.values(), key=_by_name)]})


def parse_simulation(text: str) -> Section:
    """The packages an apt simulation would install, from its ``Inst`` lines."""
    return {m["name"]: Pin(m["name"], m["version"], m["arch"]) for m in _INST.finditer(text)}


def preferences(section: Section) -> str:
    """An apt preferences file that installs exactly the locked versions (priority 1001: even a
    version older than the mirror's newest)."""
    return "".join(f"Package: {p.name}\nPin: version {p.version}\nPin-Priority: 1001\n\n" for p in pins(section))


def differences(section: Section, installed: dict[str, str]) -> list[str]:
    """How a root's packages (name -> version) differ from its lock, in words (empty: they match)."""
    out = []
    locked = {p.name: p for p in pins(section)}
    for name in sorted(set(locked) | set(installed)):
        want, got = locked.get(name), installed.get(name)
        if want is None:
            out.append(f"{name} {got} is in the root, not in the lock")
        elif got is None:
            # the simulation resolves in one apt run, mmdebstrap in phases: it may leave out a package the
            # simulation chose for a dependency (lsb-base). Every package the root has is still pinned.
            continue
        elif got != want.version:
            out.append(f"{name} is {got} in the root, {want.version} in the lock")
    return out


def changes(old: Section, new: Section) -> list[str]:
    """What a refresh changed, for its report."""
    out = []
    before, after = {p.name: p for p in pins(old)}, {p.name: p for p in pins(new)}
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            out.append(f"+ {name} {b.version}")
        elif b is None and a is not None:
            out.append(f"- {name} {a.version}")
        elif a is not None and b is not None and a.version != b.version:
            out.append(f"  {name} {a.version} -> {b.version}")
    return out
