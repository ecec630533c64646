"""Kernel configuration: profiles, fragments, merge, and the dropped-option check.

A profile (``profiles/kernel/<name>.yaml``) names a base (``defconfig``,
``tinyconfig``, ``allnoconfig`` or a config file) and fragments.  The
project adds its own fragments.  They are merged with the kernel's
``scripts/kconfig/merge_config.sh -m`` and settled by ``make olddefconfig``.

Kconfig silently drops a requested option whose dependencies are unmet.
``verify`` diffs every requested ``CONFIG_*`` against the final ``.config``
and fails naming each option, what was requested and what came out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.infra import paths, schema
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError
from builder.infra.schema import setting

BASE_TARGETS = ("defconfig", "tinyconfig", "allnoconfig")
_SET = re.compile(r'CONFIG_([A-Za-z0-9_]+)=(y|m|n|"(?:[^"\\]|\\.)*"|-?[0-9]+|0x[0-9a-fA-F]+)')
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_BLOCK_END = re.compile(r"^\s*(?:menu)?config \w+|^\s*(?:endmenu|menu |choice|endchoice|if |endif)")


@dataclass
class ProfileSettings:
    description: str = setting("", help="what this profile is for")
    base: str = setting("defconfig", help="defconfig, tinyconfig, allnoconfig, or a config file "
                        "relative to the profile")
    fragments: list[str] = setting(factory=list, help="fragments, relative to the profile file")
    arches: dict[str, list[str]] = setting(
        factory=dict, help="per target arch, fragments merged after the common ones; a profile that has this "
        "key builds only for the arches it names")


@dataclass(frozen=True)
class Fragment:
    path: Path
    label: str  # how people name it: project-relative path
    sha256: str
    options: dict[str, str]  # CONFIG_NAME -> requested value ("n" for "is not set")


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    base: str  # a BASE_TARGETS name, or an absolute path to a config file
    base_sha256: str | None
    fragments: list[Fragment]

    def identity(self) -> dict[str, object]:
        return {
            "profile": self.name,
            "base": self.base if self.base_sha256 is None else {"file": self.base, "sha256": self.base_sha256},
            "fragments": [{"name": f.label, "sha256": f.sha256} for f in self.fragments],
        }

    def requested(self) -> dict[str, tuple[str, str]]:
        """CONFIG_NAME -> (value, fragment label); later fragments win, like merge_config.sh."""
        out: dict[str, tuple[str, str]] = {}
        for frag in self.fragments:
            for name, value in frag.options.items():
                out[name] = (value, frag.label)
        return out


def parse_fragment(path: Path, label: str) -> Fragment:
    if not path.exists():
        raise UserError(f"{label}: config fragment not found",
                        hint="fix the path in the profile or in kernel.fragments")
    text = paths.read_text(path, "config fragment")
    options: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _SET.fullmatch(line) or _UNSET.fullmatch(line)
        if m:
            options["CONFIG_" + m.group(1)] = m.group(2) if m.re is _SET else "n"
            continue
        if line.startswith("#") and not line.startswith("# CONFIG_"):
            continue
        raise UserError(
            f"{label}:{number}: malformed fragment line: {raw.strip()!r}",
            hint="lines are CONFIG_NAME=y|m|n|\"string\"|number, '# CONFIG_NAME is not set', or # comments")
    return Fragment(path, label, sha256_file(path), options)


def _inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved; UserError unless it stays inside the project ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(f"{what}: {path} resolves to {resolved}, outside the project {root}",
                        hint="profiles, their base configs and fragments live in the project directory")
    return resolved


def load_profile(root: Path, name: str, extra_fragments: list[str], arch: str = "x86_64") -> Profile:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise UserError(f"kernel profile {name!r} is not a profile name",
                        hint="a profile is profiles/kernel/<name>.yaml: give the name, not a path")
    profile_dir = root / "profiles" / "kernel"
    path = profile_dir / f"{name}.yaml"
    if path.exists():
        _inside(root, path, f"kernel profile {name}")
    if not path.exists():
        known = sorted(p.stem for p in profile_dir.glob("*.yaml"))
        raise UserError(f"kernel profile {name!r} not found ({path})",
                        hint="known profiles: " + (", ".join(known) or "none"))
    data = schema.load_file(ProfileSettings, path)

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    base_sha = None
    base = data.base
    if base not in BASE_TARGETS:
        base_path = _inside(root, profile_dir / base, f"{rel(path)}: base")
        if not base_path.is_file():
            raise UserError(f"{rel(path)}: base: {base!r} is neither {', '.join(BASE_TARGETS)} nor a file")
        base, base_sha = str(base_path), sha256_file(base_path)
    if data.arches and arch not in data.arches:
        raise UserError(f"kernel profile {name!r} has no fragments for {arch} ({rel(path)}: arches)",
                        hint=f"it builds for {', '.join(data.arches)}; add an '{arch}:' entry under arches, "
                             "or choose another profile")
    names = [*data.fragments, *data.arches.get(arch, [])]
    frags = [parse_fragment(_inside(root, profile_dir / f, f"{rel(path)}: fragments"), rel(profile_dir / f))
             for f in names]
    frags += [parse_fragment(_inside(root, root / f, "kernel.fragments"), f) for f in extra_fragments]
    return Profile(name, path, base, base_sha, frags)


def read_config(path: Path) -> dict[str, str]:
    """A .config as CONFIG_NAME -> value ('n' for 'is not set')."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _SET.fullmatch(line) or _UNSET.fullmatch(line)
        if m:
            values["CONFIG_" + m.group(1)] = m.group(2) if m.re is _SET else "n"
    return values


@dataclass(frozen=True)
class Mismatch:
    option: str
    requested: str
    actual: str  # value, or "absent" when the option is not in .config at all
    fragment: str


def diff_requested(profile: Profile, final: dict[str, str]) -> list[Mismatch]:
    out = []
    for option, (want, label) in sorted(profile.requested().items()):
        got = final.get(option)
        if got == want or (want == "n" and got is None):
            continue
        out.append(Mismatch(option, want, got if got is not None else "absent", label))
    return out


def _enclosing_ifs(src: Path, kconfig: Path) -> list[str]:
    """``if`` blocks around the line that sources ``kconfig`` (one level up).

    Options often look satisfiable yet vanish because the file defining them
    is sourced inside e.g. ``if MISC_FILESYSTEMS``.
    """
    rel = str(kconfig.relative_to(src))
    sourced = re.compile(rf'^\s*(?:o?source|rsource)\s+"{re.escape(rel)}"')
    for parent, lines in _kconfig_files(src):
        stack: list[str] = []
        for i, line in enumerate(lines):
            # ``if``/``endif`` are statements at the start of a line; an indented "if ..." is help text
            stripped = line.split("#", 1)[0].rstrip()
            if stripped.startswith("if "):
                stack.append(f"{stripped} ({parent.relative_to(src)}:{i + 1})")
            elif stripped == "endif" and stack:
                stack.pop()
            elif sourced.match(line):
                return list(stack)
    return []


def _kconfig_files(src: Path) -> Iterator[tuple[Path, list[str]]]:
    """Every Kconfig file of the tree (not quilt's .pc backups) with its lines."""
    for path in sorted(p for p in src.rglob("Kconfig*") if ".pc" not in p.relative_to(src).parts):
        try:
            yield path, path.read_text(errors="replace").splitlines()
        except OSError:
            continue


def explain(src: Path, option: str, arch_dir: str = "x86") -> str:
    """Where the option is defined and what it depends on (for the error).  An option defined only
    under other architectures' arch/ directories says so, naming them and the target."""
    name = option.removeprefix("CONFIG_")
    head = re.compile(rf"^\s*(?:menu)?config {re.escape(name)}\s*$")
    found: list[tuple[Path, int, list[str]]] = []
    for kconfig, lines in _kconfig_files(src):
        for i, line in enumerate(lines):
            if head.match(line):
                deps = []
                for follow in lines[i + 1:i + 40]:
                    if _BLOCK_END.match(follow):
                        break
                    if re.match(r"^\s*depends on ", follow):
                        deps.append(follow.strip())
                found.append((kconfig.relative_to(src), i + 1, deps))
    if not found:
        return "no Kconfig in this source defines it (misspelt, removed, or for another architecture)"

    def foreign(rel: Path) -> str | None:
        return rel.parts[1] if rel.parts[0] == "arch" and rel.parts[1] != arch_dir else None

    own = [f for f in found if foreign(f[0]) is None]
    if not own:
        places = "; ".join(f"{r}:{n} (architecture {foreign(r)}" + "".join(f", {d}" for d in deps) + ")"
                           for r, n, deps in found)
        return f"defined only under other architectures, not {arch_dir}: {places}"
    rel, number, deps = own[0]
    deps = deps + [f"inside {block}" for block in _enclosing_ifs(src, src / rel)]
    return f"defined at {rel}:{number}" + (f"; {'; '.join(deps)}" if deps else "")


def shapes_config(rel: str) -> bool:
    """Whether a source file (tree-relative) is among what ``.config`` and the kernel release are made
    from: the Kconfig files, kconfig itself, the configs a base target copies, the top Makefile
    (VERSION, PATCHLEVEL...) and localversion files."""
    parts = Path(rel).parts
    name = parts[-1] if parts else ""
    return (name.startswith("Kconfig") or rel.startswith("scripts/kconfig/") or "configs" in parts[:-1]
            or rel == "Makefile" or name.startswith("localversion") or (len(parts) == 3 and parts[0] == "arch"
                                                                         and name == "Makefile"))


def check(profile: Profile, config_path: Path, src: Path, arch_dir: str, arch: str = "x86_64") -> dict[str, str]:
    """Fail if any requested option did not land; return the effective values of requested options."""
    final = read_config(config_path)
    mismatches = diff_requested(profile, final)
    if mismatches:
        lines = [f"{m.option}: requested {m.requested}, got {m.actual} ({m.fragment}) -- "
                 f"{explain(src, m.option, arch_dir)}" for m in mismatches]
        names = ", ".join(m.option for m in mismatches[:5]) + (" ..." if len(mismatches) > 5 else "")
        raise UserError(
            f"{len(mismatches)} requested config option(s) did not land in the {arch} .config: {names}",
            hint="enable their dependencies in a fragment, or drop the request; "
                 f"final config: {config_path}",
            details=lines,
        )
    return {opt: final.get(opt, "absent") for opt in sorted(profile.requested())}
