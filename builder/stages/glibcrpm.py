"""The glibc-rpm stage: an EL distribution's own glibc source RPM + our quilt
series -> that distribution's glibc binary RPMs, one stage per EL distro
(``<work>/distros/<name>/glibc-rpm/``).

The source RPM is the one the distribution's repositories install
(``dnf download --source glibc`` through a private dnf.conf holding the
distro's repositories and ``glibc.source_repositories``; cached until
``--force-glibc``), or a local ``.src.rpm`` pinned by sha256.  Its spec gets
our patches as ``PatchNNNN: isobuild-<name>`` tags numbered above its own
(EL9's ``%autosetup -p1`` applies every Patch tag; a spec without
%autosetup/%autopatch also gets ``%patch`` lines), the release suffix on its
``Release:`` and a %changelog entry.  Before the long build: the patched
source RPM's version-release must sort above the original's (rpm's own
vercmp), and ``rpmbuild -bp`` on the host applies everything, so a patch that
does not apply fails in seconds naming patch, file and hunk.  The rebuild runs
in mock on EL hosts, elsewhere in an EL buildroot made like mock makes one
(``dnf --installroot`` of mock's base packages + the BuildRequires, then
rpmbuild inside it).  The binary RPMs are published under
``artifacts/<key>/`` (with the patched source RPM) through a temp dir and a
rename; ``current`` then points at them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from builder.infra import atomic, keys, log, runner, state
from builder.infra.arch import ARCHES
from builder.infra.config import SHA256, Project
from builder.infra.digests import DigestCache, sha256_bytes, sha256_file
from builder.infra.errors import InfraError, IsobuildError, UserError
from builder.infra.hosttools import install_hint
from builder.infra.schema import matches, setting
from builder.stages.base import PlannedStage, keyed_targets
from builder.stages.glibc import packages_summary
from builder.tools import dnf, quilt
from builder.tools.chroot import Chroot, remove_root


class ELDistro(Protocol):
    """What the glibc-rpm stage takes of an EL distro (builder.distros.el.ELDistro is one)."""

    name: str
    project: Project
    family: ClassVar[str]
    settings: Any  # .glibc (ELGlibcSettings), .release, .mock.config

    @property
    def where(self) -> str: ...

    @property
    def work(self) -> Path: ...

    def repos(self) -> list[dnf.Repo]: ...

    def probe_repositories(self) -> None: ...

    def build_path(self) -> str: ...

    def mock_argv(self, *args: str) -> list[str]: ...

STAGE = "glibc-rpm"
STAGE_VERSION = 1
OURS = "isobuild-"  # our patches' file names in SOURCES: apart from the distribution's
SPEC_NAME = "glibc"
BUILDDIR = "/builddir"  # inside the dnf-made buildroot, as in mock's
DOWNLOAD_PLUGIN = "/usr/lib/python3/dist-packages/dnf-plugins/download.py"  # Debian's dnf-plugins-core
_EVR_FORMAT = "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}"
_HEADER_FORMAT = f"%{{NAME}}\\t{_EVR_FORMAT}\\t%{{RELEASE}}\\t%|SOURCEPACKAGE?{{src}}:{{bin}}|\\n"
_RPM_FORMAT = f"%{{NAME}}\\t{_EVR_FORMAT}\\t%{{ARCH}}\\n"
_EVR = re.compile(r"(?:\d+:)?[A-Za-z0-9._+~^]+-[A-Za-z0-9._+~^]+")
_DIST = re.compile(r"\.el\d+(?:_\d+)*")
_PATCH_TAG = re.compile(r"^Patch(\d*)\s*:\s*(\S+)", re.I)
_SOURCE_TAG = re.compile(r"^Source\d*\s*:", re.I)
_RELEASE_TAG = re.compile(r"^(Release\s*:\s*)(\S.*?)\s*$", re.I)
_SECTION = re.compile(r"^%(prep|build|install|check|clean|files|changelog|description|package|pre|post|preun|"
                      r"postun|pretrans|posttrans|triggerin|triggerun|triggerpostun|verifyscript|"
                      r"generate_buildrequires|conf)\b")
_IF = re.compile(r"^%if")
_ENDIF = re.compile(r"^%endif\b")
_CHANGELOG_DATE = re.compile(r"^\*\s+(\w{3}\s+\w{3}\s+\d{1,2}\s+\d{4})\b")
_OUR_PATCH_RUN = re.compile(rf"SOURCES/{OURS}([^\s'\"]+)")
_DEBUG = re.compile(r"-(debuginfo|debugsource)-")


# --- settings (distros/<name>.yaml: repositories, glibc) -------------------------------------

_URL = matches(r"(https?|file)://\S+", "an http(s):// or file:// URL")
_PACKAGE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9_.+:-]*")
LOCAL_REPO = "isobuild-local"  # the EL plugin's own repository of our packages


@dataclass
class Repository:
    name: str = setting("", help="repository id (dnf section, kickstart --name)",
                        check=matches(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a repository id of A-Z a-z 0-9 . _ -"))
    baseurl: str | None = setting(None, help="base URL ($releasever, $basearch are expanded)", check=_URL)
    mirrorlist: str | None = setting(None, help="mirror list URL (one base URL per line)", check=_URL)
    gpgkey: str | None = setting(None, help="URL of the key its packages are signed with", check=_URL)
    gpgcheck: bool = setting(True, help="check package signatures (needs gpgkey)")

    def validate(self) -> str | None:
        if not self.name:
            return "name: required"
        if bool(self.baseurl) == bool(self.mirrorlist):
            return f"repository {self.name!r}: give exactly one of baseurl and mirrorlist"
        if self.gpgcheck and not self.gpgkey:
            return f"repository {self.name!r}: gpgcheck needs gpgkey (or set gpgcheck: false)"
        if self.name == LOCAL_REPO:
            return f"repository {self.name!r}: the name is isobuild's own repository's"
        return None


def _distinct_names(key: str, repositories: list[Repository]) -> str | None:
    names = [r.name for r in repositories]
    return f"{key}: names must differ (got {', '.join(names)})" if len(set(names)) != len(names) else None


def _package_names(key: str, packages: list[str]) -> str | None:
    bad = next((name for name in packages if not _PACKAGE.fullmatch(name)), None)
    return None if bad is None else f"{key}: {bad!r} is not a package or @group name"


def _default_buildroot() -> list[str]:
    # mock's chroot_setup_cmd for EL9 (its 'buildsys-build' group): what an rpmbuild of any EL
    # package may take for granted besides its BuildRequires
    return ["bash", "bzip2", "coreutils", "cpio", "diffutils", "redhat-release", "findutils", "gawk",
            "glibc-minimal-langpack", "grep", "gzip", "info", "patch", "redhat-rpm-config", "rpm-build", "sed",
            "shadow-utils", "tar", "unzip", "util-linux", "which", "xz"]


@dataclass
class SrpmSettings:
    type: Literal["repo", "file"] = setting(
        "repo", help="repo: 'dnf download --source glibc' from repositories + source_repositories (the source of "
        "the glibc the repositories install); file: a local .src.rpm pinned by sha256")
    path: str | None = setting(None, help="file: the .src.rpm (relative to the project)")
    sha256: str | None = setting(None, help="file: its sha256; a mismatch refuses to build", check=SHA256)

    def validate(self) -> str | None:
        if self.type == "file" and not (self.path and self.sha256):
            return "type 'file' needs both 'path' and 'sha256'"
        return None


@dataclass
class ELGlibcSettings:
    enabled: bool = setting(True, help="rebuild the distribution's glibc source RPM with patches/glibc/series and "
                            "install it in the root (false, or glibc.enabled: false in isobuild.yaml: the "
                            "distribution's glibc stays)")
    srpm: SrpmSettings = setting(factory=SrpmSettings, help="where the glibc source RPM comes from")
    source_repositories: list[Repository] = setting(
        factory=list, help="repositories of source RPMs (srpm.type repo); the distribution's own repositories are "
        "used with them, to find which glibc they install")
    release_suffix: str = setting(".isobuild1", help="appended to the spec's Release (must sort above it: start "
                                  "with '.', never '~')",
                                  check=matches(r"[A-Za-z0-9._+~^]{1,32}", "up to 32 of A-Z a-z 0-9 . _ + ~ ^"))
    dist: str | None = setting(None, help="the %{dist} to rebuild with; default: the one in the source RPM's "
                               "Release (e.g. .el9_4), else .el<release>",
                               check=matches(r"\.[A-Za-z0-9_.]{1,32}", "'.' then up to 32 of A-Z a-z 0-9 _ ."))
    check: bool = setting(False, help="run the spec's %check (glibc's test suite: hours) during the rebuild")
    buildroot_packages: list[str] = setting(
        factory=_default_buildroot, help="build: dnf -- the EL buildroot's base packages (mock's EL9 "
        "chroot_setup_cmd); the source RPM's BuildRequires are added")

    def validate(self) -> str | None:
        return _distinct_names("source_repositories", self.source_repositories) \
            or _package_names("buildroot_packages", self.buildroot_packages)


# --- where things go ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout(state.KeyedLayout):
    """<work>/distros/<name>/glibc-rpm.  A key's tree holds rpmbuild's topdir and the buildroot."""

    @property
    def srpms(self) -> Path:
        """Downloaded source RPMs, one dir per repository configuration."""
        return self.root / "srpm"

    @property
    def rpmdb(self) -> Path:
        """An empty database for rpm to open while it reads package files (not ~/.rpmdb)."""
        return self.root / "rpmdb"


def layout_for(plugin: ELDistro) -> Layout:
    return Layout(plugin.work / STAGE)


@dataclass(frozen=True)
class Srpm:
    path: Path
    sha256: str
    name: str  # the package it builds (glibc)
    evr: str  # [epoch:]version-release
    release: str


@dataclass
class Plan(state.KeyedPlan):
    plugin: ELDistro
    settings: ELGlibcSettings
    layout: Layout
    srpm: Srpm
    series: list[quilt.Patch]
    dist: str
    build_path: str
    inputs: dict[str, Any]
    key: str

    @property
    def topdir(self) -> Path:
        return self.tree / "rpmbuild"

    @property
    def where(self) -> str:
        return self.plugin.where

    @property
    def version(self) -> str:
        """Ours, as expected: the source RPM's with the suffix (metadata has the built one's)."""
        return self.srpm.evr + self.settings.release_suffix


# --- rpm on the host --------------------------------------------------------------------------


def vercmp(a: str, b: str) -> int:
    """rpm's own order of two [epoch:]version-release strings: -1, 0 or 1."""
    for value in (a, b):
        if not _EVR.fullmatch(value):
            raise UserError(f"{value!r} is not an rpm [epoch:]version-release")
    out = runner.output(["rpm", "--eval", f'%{{lua:print(rpm.vercmp("{a}", "{b}"))}}']).strip()
    if out not in ("-1", "0", "1"):
        raise InfraError(f"rpm could not compare {a} and {b}: {out[:200]}", hint="is rpm >= 4.16 installed?")
    return int(out)


def _query(layout: Layout, package: Path, fmt: str) -> str:
    """rpm -qp's output for ``fmt``.  The distribution signs its packages and the host's rpm has no
    key for them: signatures are not checked here, so no NOKEY warning mixes into the output (a
    file is pinned by sha256; a download is checked by dnf against the repository's metadata)."""
    layout.rpmdb.mkdir(parents=True, exist_ok=True)
    out = runner.output(["rpm", f"--dbpath={layout.rpmdb}", "--nosignature", "--nodigest", "-qp", "--qf", fmt,
                         str(package)])
    return "\n".join(line for line in out.splitlines() if not line.startswith("warning: "))


def read_srpm(layout: Layout, path: Path, sha256: str, where: str) -> Srpm:
    """What the source RPM is: it must build glibc."""
    try:
        fields = _query(layout, path, _HEADER_FORMAT).strip().splitlines()[-1].split("\t")
    except runner.CommandFailed as exc:
        raise UserError(f"{path}: not an rpm package ({where}: glibc.srpm)", details=exc.details) from None
    name, evr, release, kind = fields if len(fields) == 4 else ("?", "", "", "")
    if kind != "src" or name != SPEC_NAME:
        raise UserError(f"{path}: not a glibc source RPM (it is {name} {evr}, a {kind or '?'} package)",
                        hint=f"{where}: glibc.srpm must give glibc's .src.rpm")
    return Srpm(path, sha256, name, evr, release)


def build_requires(layout: Layout, srpm: Path) -> list[str]:
    """The source RPM's BuildRequires, as dnf install arguments (rpm's own rpmlib() features left out)."""
    lines = _query(layout, srpm, "[%{REQUIRENEVRS}\\n]").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("rpmlib(")]


# --- the source RPM ---------------------------------------------------------------------------


def srpm_repos(plugin: ELDistro) -> list[dnf.Repo]:
    """The distribution's repositories (which glibc it installs) and the ones holding its sources."""
    s = plugin.settings.glibc
    return plugin.repos()[:-1] + [dnf.Repo(r.name, r.baseurl, r.mirrorlist, r.gpgkey, r.gpgcheck)
                                  for r in s.source_repositories]


def srpm_cache(plugin: ELDistro) -> Path:
    """Where the source RPM downloaded from this repository configuration is kept."""
    ident = json.dumps([plugin.settings.release, *(asdict(r) for r in srpm_repos(plugin))], sort_keys=True)
    return layout_for(plugin).srpms / sha256_bytes(ident.encode())[:16]


def cached_srpm(plugin: ELDistro) -> Path | None:
    found = sorted(srpm_cache(plugin).glob("*.src.rpm"))
    return found[-1] if found else None


def download_argv(conf: Path, installroot: Path, release: str, dest: Path) -> list[str]:
    # 'download' is dnf-plugins-core's: every other plugin stays off, as with --noplugins elsewhere
    return ["dnf", "-y", f"--installroot={installroot}", f"--releasever={release}", f"--config={conf}",
            "--disableplugin=*", "--enableplugin=download", "--refresh", "download", "--source",
            f"--destdir={dest}", SPEC_NAME]


def download_srpm(plugin: ELDistro, log_path: Path) -> Path:
    """``dnf download --source glibc``: the source of the glibc the repositories install now,
    replacing the one downloaded before.  Unreachable repositories fail first, naming each."""
    s = plugin.settings
    if not s.glibc.source_repositories:
        raise UserError(f"{plugin.where}: glibc.source_repositories: none configured, so the glibc source RPM "
                        "cannot be downloaded", hint="add the distribution's source repository, or set "
                        "glibc.srpm to {type: file, path: ..., sha256: ...}")
    # Debian's path, or an EL host's (/usr/lib/python3.9/site-packages/...)
    if not list(Path("/usr/lib").glob("python3*/*-packages/dnf-plugins/download.py")):
        raise InfraError("dnf's download command (dnf-plugins-core) is not installed: the glibc source RPM of "
                         f"{plugin.name} cannot be downloaded", hint=install_hint(DOWNLOAD_PLUGIN))
    repos = srpm_repos(plugin)
    for repo in repos:
        dnf.probe(repo, s.release, ARCHES[plugin.project.settings.arch].rpm_arch, plugin.where)
    scratch = layout_for(plugin).root / "download"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "repos.d").mkdir(parents=True)
    conf = scratch / "dnf.conf"
    conf.write_text(dnf.config(repos, scratch / "repos.d"))
    try:
        try:
            runner.run(download_argv(conf, scratch / "root", s.release, scratch / "out"), log_path=log_path,
                       env=dnf.private_home(scratch / "home", tmppath=scratch / "tmp"))
        except runner.CommandFailed as exc:
            raise InfraError(f"dnf download --source glibc failed for {plugin.where}",
                             hint="do glibc.source_repositories hold the source of the glibc the repositories "
                                  "install? see the log", details=exc.details) from None
        found = sorted((scratch / "out").glob("*.src.rpm"))
        if len(found) != 1:
            raise InfraError(f"dnf download --source glibc gave {len(found)} source RPMs, not one",
                             hint=f"see {log_path}")
        cache = srpm_cache(plugin)
        cache.mkdir(parents=True, exist_ok=True)
        staged = atomic.temp_path(cache / found[0].name, "staged")
        shutil.copyfile(found[0], staged)
        for old in cache.glob("*.src.rpm"):
            old.unlink()
        os.replace(staged, cache / found[0].name)
        return cache / found[0].name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_srpm(plugin: ELDistro, digests: DigestCache) -> Srpm:
    s = plugin.settings.glibc.srpm
    layout = layout_for(plugin)
    if s.type == "file":
        assert s.path and s.sha256
        path = plugin.project.path(s.path)
        if not path.is_file():
            raise UserError(f"{path}: glibc source RPM not found ({plugin.where}: glibc.srpm.path)",
                            hint="put the .src.rpm there or fix the path")
        actual = digests.sha256(path)
        if actual != s.sha256:
            raise UserError(f"{path}: checksum mismatch: {plugin.where} pins glibc.srpm.sha256 {s.sha256}, the file "
                            f"has {actual}", hint="refusing to build an unverified source; fetch the right file or "
                            "update the pin")
        return read_srpm(layout, path, actual, plugin.where)
    cached = cached_srpm(plugin)
    if cached is None:
        raise InfraError(f"the glibc source RPM of {plugin.name} is not downloaded yet",
                         hint=f"isobuild {plugin.name} downloads it (dnf download --source glibc)")
    return read_srpm(layout, cached, digests.sha256(cached), plugin.where)


def default_dist(srpm: Srpm, release: str) -> str:
    """The %{dist} the source RPM was built with (.el9_4 in 100.el9_4.2), else .el<release>."""
    m = _DIST.search(srpm.release)
    return m.group(0) if m else f".el{release}"


def plan(plugin: ELDistro) -> Plan:
    """Resolve every input and the stage key; downloads nothing (see download_srpm)."""
    project = plugin.project
    gs = plugin.settings.glibc
    digests = project.digests()
    srpm = resolve_srpm(plugin, digests)
    digests.save()
    series = quilt.read_series(project.input_dir(project.settings.glibc.patches, "glibc.patches"))
    dist = gs.dist or default_dist(srpm, plugin.settings.release)
    build_path = plugin.build_path()
    inputs: dict[str, Any] = {
        "stage": STAGE,
        "stage_version": STAGE_VERSION,
        "distro": plugin.name,
        "release": plugin.settings.release,
        "srpm": {"file": srpm.path.name, "sha256": srpm.sha256},
        "patches": [p.identity() for p in series],
        "release_suffix": gs.release_suffix,
        "dist": dist,
        "check": gs.check,
        "build": build_path,
        "mock": plugin.settings.mock.config if build_path == "mock" else None,
        "buildroot": None if build_path == "mock" else {
            "packages": gs.buildroot_packages,
            "repositories": [asdict(r) for r in plugin.repos()[:-1]]},
        "arch": project.settings.arch,
    }
    return Plan(plugin, gs, layout_for(plugin), srpm, series, dist, build_path, inputs, keys.compute(inputs))


def built(p: Plan) -> dict[str, Any] | None:
    return state.load(p.artifact / "metadata.json")


class GlibcRpmStage(PlannedStage):
    """An EL distro's patched glibc as the distribution's own RPMs (builder.stages.base.Stage).
    The source RPM is downloaded (``fetch``) when there is none yet or asked for afresh."""

    kind = STAGE

    def __init__(self, plugin: ELDistro, arch: str | None = None):
        super().__init__(plugin.project, plugin.name, arch or plugin.project.settings.arch)
        self.plugin = plugin

    def make_plan(self) -> Plan:
        return plan(self.plugin)

    @property
    def legacy_record(self) -> str | None:
        return f"distros/{self.plugin.name}/{STAGE}/state.json" if self.arch == "x86_64" else None

    def check(self) -> None:
        """Everything but the source RPM itself, which may not be downloaded yet (the EL plugin's
        check probes the source repositories)."""
        if self.plugin.settings.glibc.srpm.type == "file" or cached_srpm(self.plugin) is not None:
            self.key  # noqa: B018

    def fetch(self, force: bool, log_path: Path) -> None:
        """Download the source RPM when there is none yet, or with ``force`` (the repositories' newest)."""
        if self.plugin.settings.glibc.srpm.type == "repo" and (force or cached_srpm(self.plugin) is None):
            with log.stage("glibc-rpm.download", distro=self.plugin.name, log=str(log_path)):
                download_srpm(self.plugin, log_path)
            self.__dict__.pop("plan", None)
            self.__dict__.pop("key", None)

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self.plan, log_path)

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        return packages_summary(self.artifact, meta, "rpms", "glibc")

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        return [p for root in (work_dir / "distros").glob(f"*/{STAGE}") for p in keyed_targets(root, keep)]


# --- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OurPatch:
    name: str  # in the series
    source: str  # its file name in SOURCES
    strip: int
    number: int  # its Patch tag


def source_name(p: quilt.Patch) -> str:
    return OURS + p.name.replace("/", "-")


def _depth_after(lines: list[str], index: int) -> int:
    """How many %if blocks are open after line ``index``."""
    depth = 0
    for line in lines[:index + 1]:
        if _IF.match(line):
            depth += 1
        elif _ENDIF.match(line):
            depth -= 1
    return depth


def _past_conditionals(lines: list[str], index: int) -> int:
    """The line to insert after so that an insertion after ``index`` is outside every %if."""
    depth = _depth_after(lines, index)
    while depth > 0 and index + 1 < len(lines):
        index += 1
        if _IF.match(lines[index]):
            depth += 1
        elif _ENDIF.match(lines[index]):
            depth -= 1
    return index


def _changelog_date(lines: list[str], at: int) -> str:
    for line in lines[at + 1:]:
        if m := _CHANGELOG_DATE.match(line):
            return " ".join(m.group(1).split())
    return "Thu Jan 01 1970"


def patch_spec(text: str, series: list[quilt.Patch], suffix: str, where: str) -> tuple[str, list[OurPatch]]:
    """The spec with our series: Patch tags above its own, %patch lines if %prep needs them, the
    release suffix, a %changelog entry.  ``where`` names the spec in errors."""
    lines = text.splitlines()
    highest = max((int(m.group(1) or 0) for line in lines if (m := _PATCH_TAG.match(line))), default=-1)
    ours = [OurPatch(p.name, source_name(p), p.strip, highest + 1 + n) for n, p in enumerate(series)]
    if not ours:
        raise UserError("patches/glibc/series is empty: there is nothing to rebuild the glibc source RPM with",
                        hint="add patches, or set glibc.enabled: false in the distro file to keep its glibc")

    # %prep: %autosetup (without -N) and %autopatch apply every Patch tag, in number order
    prep = next((i for i, line in enumerate(lines) if re.match(r"^%prep\b", line)), None)
    if prep is None:
        raise UserError(f"{where}: the spec has no %prep section to apply our patches in")
    end = next((i for i in range(prep + 1, len(lines)) if _SECTION.match(lines[i])), len(lines))
    auto = [line for line in lines[prep:end] if re.match(r"^%autopatch\b", line)
            or (re.match(r"^%autosetup\b", line) and not re.search(r"\s-N\b", line))]
    patch_lines: list[str] = []
    if auto:
        m = re.search(r"\s-p\s*(\d+)", auto[-1])
        for p in ours:
            if m and p.strip != int(m.group(1)):
                raise UserError(f"patch {p.name} is applied with -p{p.strip}, but the spec's {auto[-1].split()[0]} "
                                f"applies every patch with -p{m.group(1)}",
                                hint="make the patch -p1 (paths a/... b/...) and drop -pN from its series line")
    else:
        last = [i for i in range(prep, end) if re.match(r"^%patch(\d+|\s|$)", lines[i])]
        if not last:
            raise UserError(f"{where}: %prep has no %autosetup, %autopatch or %patch line: isobuild cannot tell "
                            "how the spec applies patches", hint="use a spec that applies its patches in %prep, "
                            "or set glibc.enabled: false in the distro file")
        after = _past_conditionals(lines, last[-1])
        patch_lines = [f"%patch -P {p.number} -p{p.strip}" for p in ours]
        lines[after + 1:after + 1] = patch_lines

    # the tags: after the last Patch tag (outside its %if), else after the last Source tag
    anchors = [i for i, line in enumerate(lines) if _PATCH_TAG.match(line)] \
        or [i for i, line in enumerate(lines) if _SOURCE_TAG.match(line)]
    if not anchors:
        raise UserError(f"{where}: the spec has neither Patch nor Source tags")
    after = _past_conditionals(lines, anchors[-1])
    lines[after + 1:after + 1] = ["# isobuild: patches/glibc/series"] + \
        [f"Patch{p.number}: {p.source}" for p in ours]

    release = next((i for i, line in enumerate(lines) if _RELEASE_TAG.match(line)), None)
    if release is None:
        raise UserError(f"{where}: the spec has no Release tag to add {suffix!r} to")
    m = _RELEASE_TAG.match(lines[release])
    assert m is not None
    lines[release] = f"{m.group(1)}{m.group(2)}{suffix}"

    # a deterministic %changelog entry: dated like the newest one (rpm wants them newest first)
    entry = ["* {date} isobuild <isobuild@localhost>",
             *(f"- isobuild: patches/glibc/series: {p.name.replace('%', '%%')} "
               f"(sha256 {p.sha256[:16]})" for p in series), ""]
    changelog = next((i for i, line in enumerate(lines) if re.match(r"^%changelog\b", line)), None)
    if changelog is None:
        lines += ["", "%changelog", *(e.replace("{date}", "Thu Jan 01 1970") for e in entry)]
    else:
        date = _changelog_date(lines, changelog)
        lines[changelog + 1:changelog + 1] = [e.replace("{date}", date) for e in entry]
    return "\n".join(lines) + "\n", ours


# --- preparing (seconds): unpack, patch the spec, check version and %prep ---------------------------


def rpmbuild_argv(p: Plan, mode: str, spec: Path, *extra: str) -> list[str]:
    return ["rpmbuild", mode, "--define", f"_topdir {p.topdir}", "--define", f"dist {p.dist}", *extra, str(spec)]


def _home(p: Plan) -> dict[str, str]:
    """A private HOME: rpm reads no ~/.rpmmacros of the user's and writes no ~/.rpmdb."""
    return dnf.private_home(p.tree / "home", p.layout.rpmdb, p.tree / "tmp")


def unpack(p: Plan, log_path: Path) -> Path:
    """The source RPM into rpmbuild's topdir; returns its spec."""
    p.layout.rpmdb.mkdir(parents=True, exist_ok=True)
    runner.run(["rpm", "-i", "--define", f"_topdir {p.topdir}", f"--dbpath={p.layout.rpmdb}", str(p.srpm.path)],
               log_path=log_path, env=_home(p))
    specs = sorted((p.topdir / "SPECS").glob("*.spec"))
    if len(specs) != 1:
        raise UserError(f"{p.srpm.path}: the source RPM holds {len(specs)} spec files, not one")
    return specs[0]


def _diagnose_prep(p: Plan, original_spec: Path, ours: list[OurPatch], output: str,
                   log_path: Path) -> IsobuildError:
    """Which of our patches failed in %prep, and where: the spec as it came is prepared again and
    ours are applied to that tree with patch(1), which names file and hunk.  A %prep that fails
    elsewhere is the host's rpm meeting the distribution's spec: an infrastructure error."""
    errors = [*[x for x in output.splitlines() if "error" in x.lower()][-10:], f"full log: {log_path}"]
    host_hint = "the host's rpm may lack a macro or tool the spec's %prep needs: see the log, or build on an " \
        "EL host (build: mock)"
    if not _OUR_PATCH_RUN.search(output):
        return InfraError(f"%prep of the glibc source RPM ({p.srpm.path.name}) failed before our patches",
                          hint=host_hint, details=errors)
    runner.run(rpmbuild_argv(p, "-bp", original_spec, "--nodeps"), log_path=log_path, env=_home(p), check=False)
    trees = [d for d in (p.topdir / "BUILD").iterdir() if d.is_dir()] if (p.topdir / "BUILD").is_dir() else []
    for patch in ours if len(trees) == 1 else []:
        result = runner.run(["patch", f"-p{patch.strip}", "--fuzz=0", "--forward", "--no-backup-if-mismatch",
                             "-i", str(p.topdir / "SOURCES" / patch.source)], cwd=trees[0], log_path=log_path,
                            check=False, capture=True)
        if result.returncode != 0:
            failures = quilt.parse_push_output(f"Applying patch {patch.name}\n{result.output}")
            where = failures[0].describe() if failures else result.output.strip().splitlines()[-1]
            return UserError(f"patch {patch.name} does not apply at fuzz 0 to {p.plugin.name}'s glibc "
                             f"({p.srpm.path.name} after its own patches): {where}",
                             hint="refresh it against that glibc, or fix patches/glibc/series",
                             details=[f"{f.patch}: {f.describe()}" for f in failures] + [f"full log: {log_path}"])
    if len(trees) != 1:
        return InfraError(f"%prep of the glibc source RPM ({p.srpm.path.name}) failed, and preparing it without "
                          "our patches left no tree to tell which", hint=host_hint, details=errors)
    return InfraError(f"%prep of the glibc source RPM ({p.srpm.path.name}) failed after our patches applied",
                      hint=host_hint, details=errors)


def prepare(p: Plan, log_path: Path) -> Path:
    """Unpack, patch the spec, make the patched source RPM and check it; returns the patched SRPM."""
    quilt.vet(p.series)  # before anything is unpacked
    remove_root(p.tree)  # a killed dnf-path build may have left its buildroot's mounts: refuse then
    p.topdir.mkdir(parents=True)
    with log.stage("glibc-rpm.unpack", srpm=p.srpm.path.name):
        spec = unpack(p, log_path)
    original = p.topdir / f"{spec.name}.orig"
    shutil.copyfile(spec, original)
    text, ours = patch_spec(spec.read_text(encoding="utf-8"), p.series, p.settings.release_suffix,
                            f"{p.srpm.path.name}: {spec.name}")
    for patch, our in zip(p.series, ours, strict=True):
        shutil.copyfile(patch.path, p.topdir / "SOURCES" / our.source)
    spec.write_text(text, encoding="utf-8")

    runner.run(rpmbuild_argv(p, "-bs", spec), log_path=log_path, env=_home(p))
    made = sorted((p.topdir / "SRPMS").glob("*.src.rpm"))
    if len(made) != 1:
        raise InfraError(f"rpmbuild -bs made {len(made)} source RPMs in {p.topdir}/SRPMS", hint=f"see {log_path}")
    patched = read_srpm(p.layout, made[0], sha256_file(made[0]), p.where)
    if vercmp(patched.evr, p.srpm.evr) <= 0:
        raise UserError(f"{p.where}: glibc.release_suffix {p.settings.release_suffix!r} makes glibc {patched.evr}, "
                        f"which does not sort above the distribution's {p.srpm.evr}",
                        hint="start it with '.' (e.g. .isobuild1), never '~'; and leave glibc.dist unset (the "
                        "source RPM's own) unless you know better")

    with log.stage("glibc-rpm.prep", patches=len(ours)):
        result = runner.run(rpmbuild_argv(p, "-bp", spec, "--nodeps"), log_path=log_path, env=_home(p),
                            check=False, capture=True)
        if result.returncode != 0:
            raise _diagnose_prep(p, original, ours, result.output, log_path)
    shutil.rmtree(p.topdir / "BUILD", ignore_errors=True)  # only the check needed it
    return made[0]


# --- the rebuild ----------------------------------------------------------------------------------


def mock_argv(p: Plan, srpm: Path, result: Path) -> list[str]:
    # dist: the rebuild must carry the Release the version check saw (a mock configuration's
    # own %dist is the release's, e.g. .el9, where an update's source RPM has .el9_4)
    return p.plugin.mock_argv("--rebuild", str(srpm), f"--resultdir={result}", "--define", f"dist {p.dist}",
                              *([] if p.settings.check else ["--nocheck"]))


def rebuild_argv(p: Plan, srpm_inside: str) -> list[str]:
    """rpmbuild inside the dnf-made buildroot, laid out like mock's (/builddir/build)."""
    return ["rpmbuild", "--rebuild", "--define", f"_topdir {BUILDDIR}/build", "--define", f"dist {p.dist}",
            *([] if p.settings.check else ["--nocheck"]), srpm_inside]


def buildroot_packages(p: Plan) -> list[str]:
    """mock's base packages and the original source RPM's BuildRequires (made by the distribution
    with its macros, which the host's rpm lacks)."""
    return list(dict.fromkeys([*p.settings.buildroot_packages, *build_requires(p.layout, p.srpm.path)]))


def rebuild_in(p: Plan, srpm: Path, result: Path, log_path: Path) -> None:
    """The dnf path: an EL buildroot like mock's, the rebuild inside it, the RPMs copied to ``result``."""
    s = p.plugin.settings
    p.plugin.probe_repositories()  # unreachable: one line naming the repository, not a dnf traceback
    buildroot = p.tree / "buildroot"
    remove_root(buildroot)
    buildroot.mkdir(parents=True)
    try:
        with log.stage("glibc-rpm.buildroot"):
            dnf.install(buildroot, p.plugin.repos()[:-1], s.release, buildroot_packages(p), p.tree / "dnf",
                        p.plugin.project.work_dir / "cache" / p.plugin.family / f"el{s.release}", log_path, p.where,
                        what="glibc buildroot package(s)",
                        hint="these are the source RPM's BuildRequires or glibc.buildroot_packages: add the "
                             "repository that has them to 'repositories' (on EL9, glibc-static and "
                             "libstdc++-static are in CRB), or build on an EL host with mock (build: mock)")
        inside = buildroot / BUILDDIR.lstrip("/")
        inside.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(srpm, inside / srpm.name)
        with log.stage("glibc-rpm.rpmbuild"):
            Chroot(buildroot, log_path).run(rebuild_argv(p, f"{BUILDDIR}/{srpm.name}"))
        result.mkdir(parents=True, exist_ok=True)
        for rpm in (inside / "build" / "RPMS").glob("*/*.rpm"):
            shutil.copyfile(rpm, result / rpm.name)
    finally:
        remove_root(buildroot)  # refuses while anything is still mounted inside


def rebuild(p: Plan, srpm: Path, result: Path, log_path: Path) -> None:
    try:
        if p.build_path == "mock":
            runner.run(mock_argv(p, srpm, result), log_path=log_path)
        else:
            rebuild_in(p, srpm, result, log_path)
    except runner.CommandFailed as exc:
        raise UserError("glibc RPM rebuild failed" + (f": {exc.error_lines[0].strip()}" if exc.error_lines else ""),
                        hint=exc.hint, details=exc.details) from None


def _rpm_record(layout: Layout, rpm: Path) -> dict[str, str]:
    name, evr, arch = _query(layout, rpm, _RPM_FORMAT).strip().splitlines()[-1].split("\t")
    return {"package": name, "version": evr, "arch": arch, "file": rpm.name, "sha256": sha256_file(rpm)}


def build(p: Plan, log_path: Path) -> dict[str, Any]:
    """Rebuild the plan's glibc RPMs and publish them; return their metadata."""
    lay = p.layout
    phases = log.Phases("glibc-rpm")
    started = state.now()
    start = time.monotonic()
    with phases.phase("prepare"):
        patched = prepare(p, log_path)
    result = p.tree / "result"
    with phases.phase("rebuild"):
        rebuild(p, patched, result, log_path)
    with log.stage("glibc-rpm.collect"), atomic.new_dir(p.artifact) as out:
        rpms = sorted(r for r in result.glob("*.rpm") if not r.name.endswith(".src.rpm")
                      and not _DEBUG.search(r.name))
        records = [_rpm_record(lay, r) for r in rpms]
        ours = next((r for r in records if r["package"] == SPEC_NAME), None)
        if ours is None:
            raise InfraError(f"{result}: the rebuild made no glibc RPM", hint=f"see {log_path}")
        (out / "rpms").mkdir()
        for rpm in rpms:
            shutil.copyfile(rpm, out / "rpms" / rpm.name)
        (out / "srpm").mkdir()  # what was rebuilt: mock --rebuild (or rpmbuild --rebuild) remakes it anywhere
        shutil.copyfile(patched, out / "srpm" / patched.name)
        metadata = {
            "stage": STAGE, "distro": p.plugin.name, "key": p.key, "inputs": p.inputs,
            "version": ours["version"], "distro_version": p.srpm.evr,
            "srpm": {"file": p.srpm.path.name, "sha256": p.srpm.sha256, "patched": patched.name},
            "patches": [{"name": x.name, "strip": x.strip, "sha256": x.sha256} for x in p.series],
            "rpms": records, "build": p.build_path, "dist": p.dist, "durations": phases.seconds,
            "seconds": round(time.monotonic() - start, 1), "started": started, "finished": state.now(),
            "log": str(log_path),
            "reproducer": {"isobuild": f"isobuild {p.plugin.name} --force-glibc",
                           "rebuild": " ".join(mock_argv(p, patched, result)) if p.build_path == "mock"
                           else " ".join(rebuild_argv(p, f"{BUILDDIR}/{patched.name}"))},
        }
        atomic.write_json(out / "metadata.json", metadata)
    remove_root(p.tree)
    return metadata


def rpms_for(meta: dict[str, Any], artifact: Path, names: set[str]) -> list[Path]:
    """Our RPMs whose package names are in ``names`` (the ones a root has)."""
    return [artifact / "rpms" / str(x["file"]) for x in meta.get("rpms", []) if x["package"] in names]
