"""The glibc stage: the distribution's own glibc source + our quilt series ->
the distribution's own binary packages (libc6, libc-bin, libc6-dev, ...).

``plan()`` resolves the inputs and the stage key without touching anything.
``build()`` prepares a scratch tree in seconds -- upstream tarball, Debian's
``debian/`` (with our packaging patches, e.g. a profile that skips
locales-all), Debian's series (already applied in the glibc-source tarball,
applied with quilt otherwise), then our series appended to Debian's and
pushed at fuzz 0, then a changelog entry giving the local version -- so a
patch that does not apply fails before the long build starts.  Then the build
dependencies are checked (``dpkg-checkbuilddeps``) and installed if allowed,
``dpkg-buildpackage -B`` builds with the configured profiles, and the .debs
are published under ``<work>/glibc/artifacts/<key>/`` through a temp
directory and a rename; ``current`` then points at them.  The build tree is
kept (until the next build or ``isobuild clean``) so chosen glibc tests can
run in it afterwards without a rebuild.

The version is the distribution's plus a suffix (``2.36-9+deb12u14+isobuild1``)
and must sort above it: installing it never downgrades the distribution.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

from builder.infra import atomic, keys, log, runner, state
from builder.infra.arch import ARCHES
from builder.infra.config import GlibcSettings, Project
from builder.infra.digests import DigestCache, sha256_file
from builder.infra.errors import CheckFailed, InfraError, UserError
from builder.infra.progress import Progress
from builder.stages.base import PlannedStage, keyed_targets
from builder.tools import aptrepo, aptsources, buildroot, quilt, sources
from builder.tools.chroot import Chroot
from builder.tools.toolchain import gcc_version

STAGE_VERSION = 1
DEBIAN_GLIBC = Path("/usr/src/glibc")
OUR_PATCHES = "isobuild"  # our series lives in debian/patches/isobuild/ of the build tree
CROSS_SRC = "/build/src"  # where a cross build's tree is inside its root (Plan.src)
_CHANGELOG_HEAD = re.compile(r"^(?P<source>[a-z0-9][a-z0-9.+-]+) \((?P<version>[^)\s]+)\) (?P<rest>.*)$")
_CHANGELOG_TRAILER = re.compile(r"^ -- (?P<who>.+?)  (?P<date>.+)$")
# glibc's make echoes each compiler command in full; one per object is a fair step count
_COMPILE_STEP = re.compile(r"^\S*gcc(?:-\d+)? .* -c ")
_WARNING = re.compile(r"\bwarning:")


@dataclass(frozen=True)
class Layout(state.KeyedLayout):
    """<work>/glibc.  A key's tree is where dpkg-buildpackage writes the .debs, next to
    src/; the last good one is kept (glibc --tests runs there)."""


@dataclass(frozen=True)
class Target:
    """Which distribution a Debian-family distro's glibc is built for: its suite on its mirror, and
    that suite's signed InRelease (the distro's own, fetched and verified once per run)."""

    suite: str
    mirror: str
    keyring: Path
    release: Callable[[], aptrepo.Release] = field(compare=False, repr=False)


@dataclass(frozen=True)
class GlibcSource:
    tarball: Path | None  # None: a source package from the archive (``archive``)
    debian_dir: Path | None
    identity: dict[str, str]
    label: str
    name: str  # the Debian source package name (glibc)
    version: str  # the distribution's version, from debian/changelog
    archive: tuple[aptrepo.Release, aptrepo.SourcePackage] | None = None

    @property
    def upstream(self) -> str:
        """The upstream version (2.36 of 2.36-9+deb12u14): which of a versioned series applies."""
        return self.version.split(":", 1)[-1].rsplit("-", 1)[0]


@dataclass
class Plan(state.KeyedPlan):
    project: Project
    settings: GlibcSettings
    layout: Layout
    source: GlibcSource
    packaging: list[quilt.Patch]  # applied to debian/ first
    series: list[quilt.Patch]
    version: str  # ours: the distribution's + suffix
    toolchain: str
    inputs: dict[str, Any]
    key: str
    cross: buildroot.CrossRoot | None = None  # a foreign arch: built in this root

    @property
    def root(self) -> Path:
        """A cross build's root (the tree is inside it, at /build/src)."""
        return self.tree / "root"

    @property
    def src(self) -> Path:
        return self.root / "build" / "src" if self.cross else self.tree / "src"

    @property
    def profiles(self) -> list[str]:
        """The build profiles; a cross build adds ``cross`` (bookworm's Build-Depends ask for the
        target's g++ without it)."""
        extra = ["cross"] if self.cross and "cross" not in self.settings.profiles else []
        return [*self.settings.profiles, *extra]

    @property
    def marker(self) -> Path:
        """Written once this key's build succeeded: the tree is whole and tests can run there."""
        return self.tree / "tree.json"


def changelog_top(changelog: Path) -> tuple[str, str, str, str]:
    """(source name, version, 'distribution; urgency' rest, date) of the newest entry."""
    try:
        lines = changelog.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{changelog}: no debian/changelog", hint="a Debian source package's debian/ directory "
                        "has one (glibc: glibc.source.debian_dir must be a Debian packaging directory)") from None
    head = _CHANGELOG_HEAD.match(lines[0]) if lines else None
    trailer = next((m for line in lines if (m := _CHANGELOG_TRAILER.match(line))), None)
    if head is None or trailer is None:
        raise UserError(f"{changelog}: the first entry is not a Debian changelog entry",
                        hint="it must start 'SOURCE (VERSION) DIST; urgency=...' and end ' -- NAME <MAIL>  DATE'")
    return head["source"], head["version"], head["rest"], trailer["date"]


def version_gt(a: str, b: str) -> bool:
    """Debian version order, by dpkg itself."""
    return runner.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def check_not_downgrade(ours: str, theirs: str, what: str, hint: str) -> None:
    if not version_gt(ours, theirs):
        raise UserError(f"glibc {ours} would downgrade {what} {theirs}", hint=hint)


def resolve_source(project: Project, settings: GlibcSettings, digests: DigestCache,
                   target: Target | None = None) -> GlibcSource:
    """The glibc source: the host's glibc-source package when the target suite is the host's own
    (or none is given), that suite's source package from its mirror otherwise; or the settings'
    tarball/git source with a debian/ directory."""
    src = settings.source
    if src.type == "debian" and target is not None and target.suite != aptsources.host_codename():
        return archive_source(project, target)
    if src.type == "debian":
        base = DEBIAN_GLIBC
        tarballs = sorted(base.glob("glibc-*.tar.*"))
        if not tarballs or not (base / "debian" / "changelog").exists():
            raise InfraError(f"{base}: Debian source package {src.package} is not installed",
                             hint=f"apt-get install {src.package}")
        tarball, debian_dir = tarballs[-1], base / "debian"
        identity = {"kind": "debian", "package": src.package, "sha256": digests.sha256(tarball)}
        label = f"{src.package} ({tarball.name})"
    else:
        generic = sources.resolve(project, src, digests, what="glibc")
        tarball, identity, label = generic.tarball, dict(generic.identity), generic.label
        debian_dir = _debian_dir(project, src.debian_dir) if src.debian_dir else DEBIAN_GLIBC / "debian"
        if not (debian_dir / "control").exists():
            raise UserError(f"{debian_dir}: not a Debian packaging directory (no control file)",
                            hint="set glibc.source.debian_dir to a debian/ directory, or apt-get install glibc-source")
    name, version, _, _ = changelog_top(debian_dir / "changelog")
    identity["debian"] = digests.tree(debian_dir)
    return GlibcSource(tarball, debian_dir, identity, label, name, version)


def archive_source(project: Project, target: Target) -> GlibcSource:
    """The target suite's glibc source package, like ``apt-get source glibc`` with no source lines in
    any apt configuration: the newest version the suite's signed Sources index lists whose .dsc the
    mirror serves (a mirror can lag behind its own index), the .dsc verified and cached by sha256;
    the rest of its files are fetched the same way when the build needs them."""
    package = project.settings.glibc.source.package.removesuffix("-source") or "glibc"
    rel = target.release()
    cache = project.work_dir / "cache" / "archive"
    skipped: list[str] = []
    for candidate in aptrepo.source_versions(rel, "main", package, cache):
        try:
            dsc = aptrepo.fetch_dsc(rel, candidate, cache)
        except aptrepo.Missing:
            skipped.append(candidate.version)
            continue
        if skipped:
            log.get().warning("glibc.source-missing", suite=target.suite, missing=skipped, using=candidate.version)
        identity = {"kind": "archive", "suite": target.suite, "package": package, "version": candidate.version,
                    "dsc_sha256": sha256_file(dsc)}
        label = f"{package} {candidate.version} ({target.suite}, from {target.mirror})" + \
            (f"; the mirror lacks {', '.join(skipped)}" if skipped else "")
        return GlibcSource(None, None, identity, label, package, candidate.version, (rel, candidate))
    raise InfraError(f"the mirror {target.mirror} serves none of the {package} sources {target.suite}'s index lists "
                     f"({', '.join(skipped)})", hint="retry later, or set 'mirror:' in the distro settings")


def _debian_dir(project: Project, value: str) -> Path:
    """glibc.source.debian_dir: inside the project, or a Debian source package's under /usr/src."""
    path = project.path(value).resolve()
    if not (path.is_relative_to(project.root.resolve()) or path.is_relative_to(Path("/usr/src"))):
        raise UserError(f"{project.config_file.name}: glibc.source.debian_dir: {path} is neither in the project "
                        "nor under /usr/src", hint="copy the packaging into the project")
    return path


def toolchain_version() -> str:
    # dpkg-query, not dpkg-buildpackage --version: a perl start costs a fifth of a second in status
    return f"{gcc_version()}; dpkg-dev {runner.output(['dpkg-query', '-W', '-f=${Version}', 'dpkg-dev']).strip()}"


def versioned(directory: Path, upstream: str) -> Path:
    """A series directory, or its ``<upstream version>/`` subdirectory when that has a series of
    its own: a team's variant of its patches for another glibc is data, not a code path."""
    return directory / upstream if (directory / upstream / "series").is_file() else directory


def plan(project: Project, target: Target | None = None) -> Plan:
    """Resolve every input and the stage key; reads files (and, for another suite or arch, the
    suite's signed InRelease and Sources index), builds nothing."""
    gs = project.settings.glibc
    arch = ARCHES[project.settings.arch]
    digests = project.digests()
    source = resolve_source(project, gs, digests, target)
    digests.save()
    packaging = quilt.read_series(versioned(project.input_dir(gs.packaging_patches, "glibc.packaging_patches"),
                                            source.upstream)) if gs.packaging_patches else []
    series = quilt.read_series(versioned(project.input_dir(gs.patches, "glibc.patches"), source.upstream))
    version = source.version + gs.suffix
    check_not_downgrade(version, source.version, "the distribution's", hint="glibc.suffix in isobuild.yaml must "
                        "sort above the distribution's version: start it with '+' (e.g. +isobuild1), not '~'")
    cross = None
    if not arch.native():
        if target is None:
            raise UserError(f"glibc for {arch.name}: no Debian suite to build it in",
                            hint=f"build it through a distro configured for {arch.name} (isobuild debian --arch "
                                 f"{arch.name}), whose suite it is")
        cross = buildroot.CrossRoot(target.suite, target.mirror, target.keyring, arch, target.release(),
                                    project.work_dir / "cache" / "cross-roots")
    # a cross build's toolchain is the root's: its key names the suite's state and the packages
    toolchain = f"{cross.suite} cross root {cross.key[:16]}" if cross else toolchain_version()
    inputs: dict[str, Any] = {
        "stage": "glibc",
        "stage_version": STAGE_VERSION,
        "source": source.identity,
        "packaging_patches": [p.identity() for p in packaging],
        "patches": [p.identity() for p in series],
        "version": version,
        "profiles": sorted(gs.profiles),
        "options": sorted(gs.options),
        "arch": project.settings.arch,
        "toolchain": toolchain,
    }
    return Plan(project, gs, Layout(project.work_dir / "glibc"), source, packaging, series, version, toolchain,
                inputs, keys.compute(inputs), cross)


def built(p: Plan) -> dict[str, Any] | None:
    return state.load(p.artifact / "metadata.json")


class GlibcStage(PlannedStage):
    """The patched glibc as the distribution's own .debs (builder.stages.base.Stage)."""

    kind = "glibc"
    work_entries = ("glibc",)

    def __init__(self, project: Project, arch: str | None = None, target: Target | None = None):
        project = project.with_arch(arch)
        super().__init__(project, "", project.settings.arch)
        self.target = target

    def make_plan(self) -> Plan:
        return plan(self.project, self.target)

    @property
    def legacy_record(self) -> str | None:
        return "glibc/state.json" if self.arch == "x86_64" else None

    def check(self) -> None:
        quilt.vet(self.plan.packaging + self.plan.series)
        check_against_suite(self.plan)

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self.plan, log_path, self.last().get("steps_last_build"))

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        return packages_summary(self.artifact, meta, "debs", "libc6")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        return keyed_targets(work_dir / "glibc", keep)


def check_against_suite(p: Plan) -> None:
    """A cross build's version against the target suite's own libc6 for the arch, before the build:
    ours must sort above it (installing it never downgrades the distribution) unless the settings
    allow it -- a mirror can serve a newer libc6 than any glibc source it has."""
    if p.cross is None:
        return
    arch = p.cross.target
    theirs = aptrepo.package(p.cross.release, "main", arch.deb_arch, "libc6",
                             p.project.work_dir / "cache" / "archive")["Version"]
    if version_gt(p.version, theirs):
        return
    what = f"glibc {p.version} would downgrade libc6 {theirs} of {p.cross.suite} ({arch.deb_arch})"
    if p.settings.allow_downgrade:
        log.get().warning("glibc.downgrade", ours=p.version, theirs=theirs, suite=p.cross.suite, arch=arch.name)
        return
    raise UserError(what + f" (built from {p.source.label})",
                    hint=f"use a mirror that serves the source of glibc {theirs}, or set glibc.allow_downgrade: "
                         "true in isobuild.yaml to install ours anyway")


def packages_summary(artifact: Path, meta: dict[str, Any], kind: str, main: str) -> tuple[int | None, str, str]:
    """A glibc stage's status summary (Debian's: debs; an EL distro's: rpms): the packages' size and
    ``main``'s sha256."""
    listed = meta.get("packages" if kind == "debs" else "rpms", [])
    ours: dict[str, Any] = next((x for x in listed if x.get("package") == main), {})
    where = artifact / kind
    size = sum(f.stat().st_size for f in where.glob(f"*.{kind[:-1]}")) if where.is_dir() else None
    return size, str(ours.get("sha256", "")), f"{meta.get('version')}, {len(listed)} packages in {where}"


# --- preparing the tree (seconds) ------------------------------------------------------


def _debian_series(debian_dir: Path) -> list[quilt.Patch]:
    return quilt.read_series(debian_dir / "patches") if (debian_dir / "patches").is_dir() else []


def debian_series_applied(src: Path, series: list[quilt.Patch], log_path: Path) -> bool:
    """Whether the tree already carries Debian's series (glibc-source ships it so).

    The newest patch reversing cleanly means it is in; the whole series is
    then taken as applied, which is how the tarball was made.
    """
    if not series:
        return True
    last = series[-1]
    result = runner.run(["patch", "-R", f"-p{last.strip}", "--dry-run", "-f", "-s", "-i", str(last.path)],
                        cwd=src, log_path=log_path, check=False)
    return result.returncode == 0


def _mark_applied(src: Path, names: list[str]) -> None:
    """Tell quilt (and dpkg-source) that these patches are in the tree."""
    pc = src / ".pc"
    pc.mkdir(exist_ok=True)
    (pc / ".version").write_text("2\n")
    (pc / ".quilt_patches").write_text("debian/patches\n")
    (pc / ".quilt_series").write_text("series\n")
    (pc / "applied-patches").write_text("".join(f"{n}\n" for n in names))


def patch_packaging(src: Path, series: list[quilt.Patch], log_path: Path) -> None:
    """Apply patches to Debian's packaging (debian/...) at fuzz 0, naming the one that fails."""
    for p in series:
        result = runner.run(["patch", f"-p{p.strip}", "--fuzz=0", "--forward", "--no-backup-if-mismatch",
                             "-i", str(p.path)], cwd=src, log_path=log_path, check=False, capture=True)
        if result.returncode != 0:
            failures = quilt.parse_push_output(f"Applying patch {p.name}\n{result.output}")
            where = failures[0].describe() if failures else result.output.strip().splitlines()[-1]
            raise UserError(f"packaging patch {p.name} does not apply at fuzz 0 to the glibc packaging: {where}",
                            hint="refresh it against this debian/ directory or fix glibc.packaging_patches",
                            details=[f"full log: {log_path}"])


def pristine_tree(project: Project) -> quilt.Pristine:
    """What ``isobuild patches check`` applies patches/glibc/series to: Debian's patched tree."""
    digests = project.digests()
    src = resolve_source(project, project.settings.glibc, digests)
    digests.save()
    tarball, debian_dir = src.tarball, src.debian_dir
    assert tarball is not None and debian_dir is not None  # no target suite: the host's own source
    packaging = project.settings.glibc.packaging_patches
    packaging_series = quilt.read_series(project.input_dir(packaging, "glibc.packaging_patches")) \
        if packaging else []

    def unpack(dest: Path, log_path: Path) -> None:
        sources.extract(sources.Source(tarball, src.identity, src.label), dest, log_path)
        shutil.copytree(debian_dir, dest / "debian", symlinks=True)
        patch_packaging(dest, packaging_series, log_path)
        theirs = _debian_series(dest / "debian")
        if not debian_series_applied(dest, theirs, log_path):
            quilt.push(dest, dest / "debian" / "patches", log_path, rollback=False,
                         onto="the upstream glibc source")

    identity = dict(src.identity, packaging=[p.identity() for p in packaging_series])
    return quilt.Pristine(identity, src.label, unpack)


def append_series(debian_patches: Path, ours: list[quilt.Patch]) -> None:
    """Copy our patches to debian/patches/isobuild/ and append them to Debian's series."""
    dest = debian_patches / OUR_PATCHES
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in ours:
        target = dest / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.path, target)
        name = f"{OUR_PATCHES}/{p.name}"
        lines.append(name if p.strip == 1 else f"{name} -p{p.strip}")
    series = debian_patches / "series"
    text = series.read_text() if series.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    series.write_text(text + "# isobuild: patches/glibc/series\n" + "".join(f"{line}\n" for line in lines))


def changelog_entry(changelog: Path, version: str, series: list[quilt.Patch],
                    heading: str = "Debian's glibc with patches/glibc/series appended") -> None:
    """Prepend the entry that gives the packages our version (glibc's here, any source package's
    that ``isobuild pkg`` patches: ``heading`` says whose series).

    Dated like the entry it follows (plus one second): the same inputs give
    the same changelog and so the same SOURCE_DATE_EPOCH for dpkg.
    """
    name, _, rest, date = changelog_top(changelog)
    when = format_datetime(parsedate_to_datetime(date) + timedelta(seconds=1))
    items = "".join(f"    - {p.name} (sha256 {p.sha256[:16]})\n" for p in series) or "    - (no patches)\n"
    entry = (f"{name} ({version}) {rest}\n\n"
             f"  * isobuild: {heading}:\n{items}\n"
             f" -- isobuild <isobuild@localhost>  {when}\n\n")
    changelog.write_text(entry + changelog.read_text(encoding="utf-8"), encoding="utf-8")


def remove_tree(p: Plan) -> None:
    """This key's scratch tree, a cross build's root inside it first (refused while mounted)."""
    buildroot.remove(p.root)
    shutil.rmtree(p.tree, ignore_errors=True)


def extract_archive(p: Plan, log_path: Path) -> None:
    """The archive's source package into ``p.src`` the way ``apt-get source`` does it: every file
    verified against the signed index, then ``dpkg-source -x`` (which checks them against the .dsc
    and applies Debian's series, recording it in .pc/ for quilt)."""
    assert p.source.archive is not None
    rel, package = p.source.archive
    files = p.tree / "source-package"
    dsc = aptrepo.fetch_source(rel, package, p.project.work_dir / "cache" / "archive", files)
    p.src.parent.mkdir(parents=True, exist_ok=True)
    with log.stage("glibc.extract", dsc=dsc.name):
        runner.run(["dpkg-source", "-x", dsc.name, str(p.src)], cwd=files, log_path=log_path)
    shutil.rmtree(files)


def prepare_tree(p: Plan, log_path: Path, before: Callable[[], object] | None = None) -> list[str]:
    """A fresh scratch tree with Debian's and our series applied; returns quilt notes.  ``before``
    runs once the tree's directory exists (a cross build unpacks its root there: the source goes
    inside it)."""
    quilt.vet(p.packaging + p.series)  # before anything is extracted
    remove_tree(p)
    p.tree.mkdir(parents=True)
    if before is not None:
        before()
    if p.source.archive is not None:
        extract_archive(p, log_path)
        patch_packaging(p.src, p.packaging, log_path)
    else:
        assert p.source.tarball is not None and p.source.debian_dir is not None
        with log.stage("glibc.extract", tarball=str(p.source.tarball)):
            sources.extract(sources.Source(p.source.tarball, p.source.identity, p.source.label), p.src, log_path)
        shutil.copytree(p.source.debian_dir, p.src / "debian", symlinks=True)
        patch_packaging(p.src, p.packaging, log_path)
        theirs = _debian_series(p.src / "debian")
        if debian_series_applied(p.src, theirs, log_path):
            _mark_applied(p.src, [x.name for x in theirs])
        else:
            with log.stage("glibc.debian-series", patches=len(theirs)):
                quilt.push(p.src, p.src / "debian" / "patches", log_path, rollback=False,
                           onto="the upstream glibc source")
    debian_patches = p.src / "debian" / "patches"
    debian_patches.mkdir(parents=True, exist_ok=True)
    append_series(debian_patches, p.series)
    notes = quilt.push(p.src, debian_patches, log_path, rollback=False,
                       onto=f"Debian's patched glibc {p.source.version}")
    changelog_entry(p.src / "debian" / "changelog", p.version, p.series)
    return notes


# --- build dependencies ----------------------------------------------------------------


_DEP = re.compile(r"[^\s|()]+(?:\s*\([^)]*\))?(?:\s*\|\s*[^\s|()]+(?:\s*\([^)]*\))?)*")


def unmet_build_deps(control: Path, profiles: list[str], log_path: Path | None = None) -> list[str]:
    """What dpkg-checkbuilddeps says ``control`` (a debian/control file) lacks for an
    arch-only build with these profiles; each entry as written there (``a (>= 1) | b``)."""
    result = runner.run(checkbuilddeps_argv(str(control), profiles), log_path=log_path, check=False, capture=True)
    return unmet_in(result, str(control))


def checkbuilddeps_argv(control: str, profiles: list[str], arch: str | None = None) -> list[str]:
    """dpkg-checkbuilddeps for an arch-only build with these profiles (``arch``: a cross build's host)."""
    return ["dpkg-checkbuilddeps", "-B", *(["-a", arch] if arch else []),
            *(["-P", ",".join(profiles)] if profiles else []), control]


def builddep_argv(src: str, profiles: list[str], arch: str | None = None) -> list[str]:
    """apt-get build-dep on a source dir (what ``debian/control`` there asks for), the same profiles."""
    return ["apt-get", "build-dep", "-y", "-q", *(["-a", arch] if arch else []), "--arch-only",
            *([f"--build-profiles={','.join(profiles)}"] if profiles else []), f"{src}/"]


def unmet_in(result: runner.Result, control: str) -> list[str]:
    """What a dpkg-checkbuilddeps run says is missing; an InfraError when it failed otherwise."""
    if result.returncode == 0:
        return []
    found = parse_unmet(result.output)
    if found is None:
        raise InfraError(f"dpkg-checkbuilddeps failed on {control}: {result.output.strip()[:200]}")
    return found


def parse_unmet(output: str) -> list[str] | None:
    """dpkg-checkbuilddeps' list of unmet build dependencies (None: it said something else).  dpkg
    1.21 (bookworm) writes "Unmet build dependencies", 1.22 (trixie) "unmet build dependencies"."""
    m = re.search(r"unmet build dependencies: (.+)", output, re.I)
    return _DEP.findall(m.group(1)) if m else None


def install_build_deps(src: Path, profiles: list[str], log_path: Path) -> None:
    """apt-get build-dep on a source dir (what ``debian/control`` there asks for)."""
    runner.run(builddep_argv(str(src), profiles), cwd=src, log_path=log_path,
               env={"DEBIAN_FRONTEND": "noninteractive"})


def ensure_build_deps(p: Plan, log_path: Path) -> list[str]:
    """Install what is missing (if allowed); return what was installed."""
    control = p.src / "debian" / "control"
    unmet = unmet_build_deps(control, p.settings.profiles, log_path)
    if not unmet:
        return []
    if not p.settings.install_build_deps:
        raise UserError(f"glibc build dependencies missing: {' '.join(unmet)}",
                        hint="install them (isobuild doctor --install, or apt-get build-dep on the glibc source) "
                             "or set glibc.install_build_deps: true")
    try:
        with log.stage("glibc.build-deps", missing=unmet):
            install_build_deps(p.src, p.settings.profiles, log_path)
    except runner.CommandFailed as exc:
        raise InfraError(f"glibc build dependencies missing and apt-get build-dep failed: {' '.join(unmet)}",
                         hint=exc.hint, details=exc.details) from None
    still = unmet_build_deps(control, p.settings.profiles, log_path)
    if still:
        raise InfraError(f"glibc build dependencies still missing after apt-get build-dep: {' '.join(still)}",
                         hint=f"see {log_path}")
    return unmet


def cross_build_deps(p: Plan, cross: buildroot.CrossRoot, log_path: Path) -> list[str]:
    """A cross build's dependencies, installed in its root (``apt-get build-dep -a``, the target's
    -dev packages as foreign ones of the root's dpkg); returns what dpkg-checkbuilddeps found missing."""
    inside = Chroot(p.root, log_path, env={"DEBIAN_FRONTEND": "noninteractive"})
    arch, control = cross.target.deb_arch, f"{CROSS_SRC}/debian/control"
    check = checkbuilddeps_argv(control, p.profiles, arch)
    missing = unmet_in(inside.run(check, capture=True, check=False), control)
    if not missing:
        return []
    try:
        with log.stage("glibc.build-deps", arch=cross.target.name, missing=len(missing)):
            inside.run(builddep_argv(CROSS_SRC, p.profiles, arch))
    except runner.CommandFailed as exc:
        raise InfraError(f"glibc cross build dependencies for {arch} could not be installed in the "
                         f"{cross.suite} build root", hint=exc.hint, details=exc.details) from None
    cross.keep_archives(p.root)
    inside.run(check)
    return missing


# --- the build -------------------------------------------------------------------------


def build_env(p: Plan) -> dict[str, str]:
    return {
        "DEB_BUILD_OPTIONS": " ".join([*p.settings.options, f"parallel={p.project.jobs}"]),
        "DEB_BUILD_PROFILES": " ".join(p.profiles),
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
    }


def build_argv(p: Plan) -> list[str]:
    """dpkg-buildpackage's command; a cross build's runs in its root, in /build/src (``env -C``)."""
    target = ["-a", p.cross.target.deb_arch] if p.cross else []
    argv = ["dpkg-buildpackage", *target, "-B", "-us", "-uc",
            *([f"--build-profiles={','.join(p.profiles)}"] if p.profiles else [])]
    return ["env", f"--chdir={CROSS_SRC}", *argv] if p.cross else argv


def compile_packages(p: Plan, log_path: Path, expected: int | None) -> int:
    progress = Progress("glibc.compile", expected, step=_COMPILE_STEP)
    try:
        if p.cross is None:
            runner.run(build_argv(p), cwd=p.src, env=build_env(p), log_path=log_path, on_line=progress.line)
        else:
            Chroot(p.root, log_path).run(build_argv(p), env=build_env(p), on_line=progress.line)
    except runner.CommandFailed as exc:
        raise UserError(
            "glibc build failed" + (f": {exc.error_lines[0].strip()}" if exc.error_lines else ""),
            hint=exc.hint, details=exc.details) from None
    finally:
        progress.finish()
    return progress.done


def run_tests(p: Plan, tests: list[str], log_path: Path) -> dict[str, str]:
    """Run chosen glibc tests in the kept build tree (``make test t=<dir>/<test>``): name -> PASS/FAIL/...

    Recorded in the artifact's metadata; a failed test raises CheckFailed (the packages are kept).
    """
    if p.cross is not None:
        raise UserError(f"glibc tests run on the arch they were built for: {p.cross.target.name} is cross-built here",
                        hint="run them in a booted image of that arch")
    marker = state.load(p.marker) or {}
    objdirs = sorted(d for d in (p.src / "build-tree").glob("*-libc") if d.is_dir())
    if marker.get("key") != p.key or not objdirs:
        raise UserError("no build tree of this glibc to run its tests in (it was cleaned or is another build's)",
                        hint="rebuild with the tests: isobuild glibc --force --tests ...")
    for test in tests:
        if not re.fullmatch(r"[A-Za-z0-9_+-]+/[A-Za-z0-9_+.-]+", test):
            raise UserError(f"glibc test {test!r}: expected <subdir>/<test>, e.g. string/test-strlen")
        if not (p.src / test.split("/")[0]).is_dir():
            raise UserError(f"glibc test {test!r}: no {test.split('/')[0]}/ directory in the glibc source")
    objdir = objdirs[0]
    results: dict[str, str] = {}
    with log.stage("glibc.tests", tests=tests):
        for test in tests:
            runner.run(["make", "-C", str(objdir), "test", f"t={test}"], env=build_env(p), log_path=log_path,
                       check=False)
            result_file = objdir / f"{test}.test-result"
            text = result_file.read_text().strip() if result_file.exists() else ""
            results[test] = text.split(":", 1)[0] if text else "NOT-RUN"
    meta = built(p) or {}
    atomic.write_json(p.artifact / "metadata.json", dict(meta, tests={**meta.get("tests", {}), **results}))
    failed = {t: r for t, r in results.items() if r != "PASS"}
    if failed:
        raise CheckFailed(f"glibc tests failed: {', '.join(f'{t} ({r})' for t, r in failed.items())}",
                          hint=f"the packages are built and kept; see {log_path}")
    return results


def build(p: Plan, log_path: Path, steps_last_build: int | None = None) -> dict[str, Any]:
    """Build the plan's glibc packages and publish them; return their metadata."""
    lay = p.layout
    phases = log.Phases("glibc")
    started = state.now()
    cross = p.cross
    if cross is None:
        with phases.phase("patch"):
            notes = prepare_tree(p, log_path)
        with phases.phase("build-deps"):
            installed = ensure_build_deps(p, log_path)
    else:
        with phases.phase("patch"):  # the root first (its bootstrap only when its key is new): the tree goes in it
            notes = prepare_tree(p, log_path, before=lambda: cross.unpack(p.root, log_path))
        with phases.phase("build-deps"):
            installed = cross_build_deps(p, cross, log_path)
    log_offset = log_path.stat().st_size
    with phases.phase("compile"):
        steps = compile_packages(p, log_path, steps_last_build)
    [warnings] = log.count_since(log_path, log_offset, _WARNING)
    with log.stage("glibc.collect"), atomic.new_dir(p.artifact) as out:
        debs = sorted(d for d in p.src.parent.glob("*.deb") if not d.name.endswith(".ddeb"))
        if not any(d.name.startswith("libc6_") for d in debs):
            raise InfraError(f"{p.tree}: dpkg-buildpackage made no libc6 package", hint=f"see {log_path}")
        (out / "debs").mkdir()
        for deb in debs:
            shutil.copyfile(deb, out / "debs" / deb.name)
        metadata = {
            "stage": "glibc", "key": p.key, "inputs": p.inputs, "version": p.version,
            "distro_version": p.source.version,
            "source": {"label": p.source.label, **p.source.identity},
            "patches": [{"name": x.name, "strip": x.strip, "sha256": x.sha256} for x in p.series],
            "packaging_patches": [{"name": x.name, "sha256": x.sha256} for x in p.packaging],
            "packages": [_deb_record(out / "debs" / d.name) for d in debs],
            "toolchain": p.toolchain, "build_env": build_env(p), "quilt_notes": notes,
            "build_deps_installed": installed, "diagnostics": {"warnings": warnings},
            "tests": {}, "durations": phases.seconds, "steps": steps, "started": started,
            "finished": state.now(), "log": str(log_path),
            "reproducer": {"isobuild": "isobuild glibc",
                           "dpkg-buildpackage": runner.reproducer(build_argv(p), p.src, build_env(p))},
        }
        atomic.write_json(out / "metadata.json", metadata)
    # the tree stays (glibc --tests runs in a native one); a cross build's root too, until the next
    # good build of its arch or isobuild clean: deleting its 2 GB took longer here (68 s) than
    # unpacking it again does
    state.save(p.marker, {"key": p.key, "arch": p.project.settings.arch})
    for other in lay.root.glob("trees/*"):  # superseded by this good build: the same arch's only
        theirs = (state.load(other / "tree.json") or {}).get("arch", "x86_64")
        if other != p.tree and theirs == p.project.settings.arch:
            buildroot.remove(other / "root")
            shutil.rmtree(other, ignore_errors=True)
    return metadata


def _deb_record(deb: Path) -> dict[str, str]:
    fields = runner.output(["dpkg-deb", "--show", "--showformat=${Package}\\t${Version}\\t${Architecture}", deb])
    name, version, arch = fields.strip().split("\t")
    return {"package": name, "version": version, "arch": arch, "file": deb.name, "sha256": sha256_file(deb)}


def debs_for(meta: dict[str, Any], artifact: Path, installed: set[str]) -> list[Path]:
    """Our packages that replace ones installed in a root (libc6, libc-bin, ...): the set
    the root already has, so the image stays what its package manager expects."""
    return [artifact / "debs" / str(x["file"]) for x in meta.get("packages", []) if x["package"] in installed]
