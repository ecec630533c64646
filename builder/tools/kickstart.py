"""Kickstarts: rendered from the jinja2 templates in ``kickstart/``, checked before any build.

The checks are pykickstart's parser for the target's RHEL version (what ``ksvalidator -v RHEL9``
does; deprecated commands count as errors) and the rules a live build relies on: ``kernel`` and
``dracut-live`` in ``%packages`` (dmsquash-live finds the live root), ``shutdown`` (livemedia-creator
waits for the install to end), exactly one partition and it is ``/`` (the live root is one
filesystem) and ``bootloader --location=none`` (the ISO brings its own loaders).  A failure names
the template, the line of the rendered kickstart and the line itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.sandbox

from builder.infra import atomic, paths, state
from builder.infra.errors import UserError

# EL release -> the pykickstart version its installer speaks
VERSIONS = {"9": "RHEL9"}
REQUIRED_PACKAGES = ("kernel", "dracut-live")
_LINE = re.compile(r"\bline (\d+)\b")


SCRIPT_KINDS = {0: "%pre", 1: "%post", 2: "%traceback", 3: "%pre-install", 4: "%onerror"}


@dataclass(frozen=True)
class Script:
    """A %pre/%post/... section: what runs, with which interpreter, where (the installed root or the host)."""

    kind: str  # %post, %pre, ...
    in_chroot: bool
    interpreter: str
    body: str
    error_on_fail: bool
    line: int

    def describe(self) -> str:
        return f"{self.kind}{'' if self.in_chroot or self.kind != '%post' else ' --nochroot'} (line {self.line})"


@dataclass
class Kickstart:
    """A rendered, validated kickstart and what isobuild reads from it."""

    text: str
    version: str
    packages: list[str] = field(default_factory=list)  # names and @groups, as in %packages
    excluded: list[str] = field(default_factory=list)  # -names
    scripts: list[Script] = field(default_factory=list)

    def chroot_posts(self) -> list[Script]:
        """The %post sections that run inside the installed root (all a dnf-path build can run)."""
        return [s for s in self.scripts if s.kind == "%post" and s.in_chroot]

    def host_scripts(self) -> list[Script]:
        """Sections that would run on the build host (%pre, %post --nochroot, ...): the dnf path refuses them."""
        return [s for s in self.scripts if not (s.kind == "%post" and s.in_chroot)]


class _ProjectLoader(jinja2.FileSystemLoader):
    """Templates from the template's own directory only: no symlink or include leads elsewhere."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        base = Path(str(self.searchpath[0])).resolve()
        if not Path(filename).resolve().is_relative_to(base):
            raise jinja2.TemplateNotFound(template)
        return source, filename, uptodate


class _Problem(Exception):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def render(template: Path, values: dict[str, Any], where: str) -> str:
    """Fill ``template``; an unknown variable or a syntax error names the template's line."""
    if not template.is_file():
        raise UserError(f"{where}: kickstart template {template} not found",
                        hint="set 'kickstart' to a file under kickstart/ (e.g. kickstart/el-live.ks.j2)")
    # a template is data: the sandbox refuses attribute tricks that reach Python internals
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
        loader=_ProjectLoader(str(template.parent)))
    paths.read_text(template, "kickstart template")  # UTF-8, readable: a clear error before jinja2's
    try:
        return env.get_template(template.name).render(**values)
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"{template}, line {exc.lineno}: {exc.message}", hint="fix the template") from None
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(values))
        raise UserError(f"{template}: {exc.message}", hint=f"the variables a template gets: {known}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise UserError(f"{template}: refused by the template sandbox: {exc}",
                        hint="templates fill in values; they cannot call into Python") from None
    except jinja2.TemplateNotFound as exc:
        raise UserError(f"{template}: includes {exc.name!r}, which is not a template beside it") from None
    except jinja2.TemplateError as exc:
        raise UserError(f"{template}: {exc}", hint="fix the template") from None


def _lines(text: str, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return [n for n, line in enumerate(text.splitlines(), 1) if rx.search(line)]


def _first(numbers: list[int]) -> int | None:
    return numbers[0] if numbers else None


def _parse(text: str, version: str) -> Any:
    # pykickstart costs a quarter second to load: only a kickstart check pays for it
    from pykickstart.errors import KickstartDeprecationWarning, KickstartError, KickstartParseError  # heavy
    from pykickstart.parser import KickstartParser  # heavy
    from pykickstart.version import makeVersion, stringToVersion  # heavy

    handler = makeVersion(stringToVersion(version))
    parser = KickstartParser(handler, followIncludes=False, errorsAreFatal=True, missingIncludeIsFatal=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser.readKickstartFromString(text)
        except KickstartParseError as exc:
            raise _Problem(getattr(exc, "lineno", None), str(getattr(exc, "message", exc)).strip()) from None
        except KickstartError as exc:
            raise _Problem(None, str(exc).strip()) from None
    for warning in caught:
        if issubclass(warning.category, KickstartDeprecationWarning):
            message = " ".join(str(warning.message).split())
            m = _LINE.search(message)
            raise _Problem(int(m.group(1)) if m else None, f"deprecated for {version}: {message}")
    return handler


def _live_rules(handler: Any, text: str) -> None:
    from pykickstart.constants import KS_SHUTDOWN  # heavy: pykickstart costs a quarter second

    packages_line = _first(_lines(text, r"^\s*%packages\b"))
    have = set(handler.packages.packageList) - set(handler.packages.excludedList)
    for name in REQUIRED_PACKAGES:
        if name not in have:
            raise _Problem(packages_line, f"%packages lacks {name} (a live root needs it: "
                           + ("dracut's dmsquash-live finds the live root)" if name == "dracut-live"
                              else "the kernel comes from isobuild's local repository)"))
    if handler.reboot.action != KS_SHUTDOWN:
        where = _first(_lines(text, r"^\s*(reboot|poweroff|halt)\b"))
        raise _Problem(where, "the install must end with 'shutdown' (livemedia-creator waits for it)")
    parts = handler.partition.partitions
    part_lines = _lines(text, r"^\s*(part|partition)\s")
    roots = [i for i, p in enumerate(parts) if p.mountpoint == "/"]
    if not roots:
        raise _Problem(None, "no 'part /' line: exactly one partition, '/', is needed (the live root)")
    others = [i for i, p in enumerate(parts) if p.mountpoint != "/"] + roots[1:]
    if others:
        i = min(others)
        line = part_lines[i] if i < len(part_lines) else None
        raise _Problem(line, f"partition {parts[i].mountpoint!r}: a live root is one filesystem, '/' alone")
    if handler.bootloader.location != "none":
        raise _Problem(_first(_lines(text, r"^\s*bootloader\b")),
                       "the live image needs 'bootloader --location=none' (the ISO brings its own loaders)")


def validate(text: str, version: str, where: str, known_good: Path | None = None) -> Kickstart:
    """Parse ``text`` as ``version`` (e.g. RHEL9) and apply the live rules; UserError naming the line.

    ``known_good`` remembers the last kickstart that passed: the same text is not parsed again
    (pykickstart costs a quarter second to load, too much for every ``isobuild status``).  Builds
    pass None and always check afresh.
    """
    key = hashlib.sha256(f"{version}\0{text}".encode()).hexdigest()
    if known_good is not None:
        seen = state.load(known_good) or {}
        if seen.get("key") == key and "scripts" in seen:
            return Kickstart(text, version, list(seen["packages"]), list(seen["excluded"]),
                             [Script(**x) for x in seen["scripts"]])
    try:
        handler = _parse(text, version)
        _live_rules(handler, text)
    except _Problem as problem:
        lines = text.splitlines()
        at = f", line {problem.line}" if problem.line else ""
        details = [f"{problem.line}: {lines[problem.line - 1]}"] if problem.line and problem.line <= len(lines) \
            else []
        raise UserError(f"{where}{at}: {problem.message}", details=details,
                        hint="fix the template or the distro settings it is rendered from") from None
    groups = [f"@{g.name}" for g in handler.packages.groupList]
    scripts = [Script(SCRIPT_KINDS.get(x.type, f"%script{x.type}"), bool(x.inChroot), str(x.interp or "/bin/sh"),
                      str(x.script), bool(x.errorOnFail), int(x.lineno or 0)) for x in handler.scripts]
    checked = Kickstart(text, version, groups + list(handler.packages.packageList),
                        list(handler.packages.excludedList), scripts)
    if known_good is not None:
        atomic.write_json(known_good, {"key": key, "packages": checked.packages, "excluded": checked.excluded,
                                       "scripts": [dataclasses.asdict(x) for x in scripts]})
    return checked
