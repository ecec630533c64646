"""dnf, rpm and createrepo_c on the host, working on an EL root: repositories,
their reachability, installs, holds and the package list.

Debian's rpm keeps its database in ``~/.rpmdb`` (its ``%_dbpath``); EL keeps it
in ``/var/lib/rpm``.  Every dnf run here gets a private HOME whose
``.rpmmacros`` sets ``%_dbpath /var/lib/rpm`` (dnf reads rpm's macros, it has no
option of its own for it), and rpm queries pass ``--dbpath``: the database
lands where the EL system in the root looks for it, on any host.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.infra import hosttools, keys, log, runner
from builder.infra.errors import InfraError, UserError
from builder.tools.chroot import Chroot
from builder.tools.rootdir import Root

DBPATH = "/var/lib/rpm"
# name, [epoch:]version-release, arch: what the manifest lists
_NAME_NEVRA = "%{NAME}\\t%{NAME}-%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}.%{ARCH}"
_QUERY_FORMAT = "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"
_NO_MATCH = re.compile(r"(?:No match for argument|Unable to find a match): *(\S+)")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Repo:
    """One [section] of a dnf configuration."""

    name: str
    baseurl: str | None = None
    mirrorlist: str | None = None
    gpgkey: str | None = None
    gpgcheck: bool = True
    priority: int | None = None  # lower wins; packages of the same name in other repos are hidden


def expand(text: str, release: str, arch: str) -> str:
    """dnf's ``$releasever`` and ``$basearch`` in a URL; any other variable is the user's to fix."""
    values = {"releasever": release, "basearch": arch}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise UserError(f"{text}: ${name} is not a variable isobuild knows ($releasever, $basearch)",
                            hint="write the value into the URL")
        return values[name]

    return _VARIABLE.sub(one, text)


def _fetch(url: str, timeout: float) -> bytes:
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).read_bytes()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read(4 << 20)
        return data


def probe(repo: Repo, release: str, arch: str, where: str, timeout: float = 10.0) -> str:
    """Fetch the repository's ``repodata/repomd.xml`` (through its mirror list, if that is what it
    has) within ``timeout`` seconds; return the base URL it answered at.

    Called before dnf runs, so an unreachable repository is one line naming it, not a dnf
    traceback after minutes of retries.
    """
    url = expand(repo.mirrorlist or repo.baseurl or "", release, arch)
    if not re.match(r"(https?|file)://", url):
        raise UserError(f"{where}: repository {repo.name!r}: {url!r} is not an http(s):// or file:// URL")
    hint = f"check the network and the URL, or point repository {repo.name!r} in {where} at a reachable mirror"
    try:
        base = url
        if repo.mirrorlist:
            listed = [line.strip() for line in _fetch(url, timeout).decode("utf-8", "replace").splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
            if not listed or not re.match(r"(https?|file)://", listed[0]):
                raise InfraError(f"repository {repo.name!r} of {where}: the mirror list {url} names no mirror",
                                 hint=hint)
            base = expand(listed[0], release, arch)
        _fetch(base.rstrip("/") + "/repodata/repomd.xml", timeout)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) \
            else getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise InfraError(f"repository {repo.name!r} of {where} is unreachable: {url}: {reason}",
                         hint=hint) from None
    return base


def config(repos: Sequence[Repo], reposdir: Path) -> str:
    """A dnf.conf holding every repository, so neither the host's nor the root's repo files count."""
    lines = ["[main]", "gpgcheck=1", "best=True", "skip_if_unavailable=False", "install_weak_deps=False",
             "keepcache=True", "installonly_limit=3", f"reposdir={reposdir}", ""]
    for repo in repos:
        lines += [f"[{repo.name}]", f"name={repo.name}"]
        lines.append(f"mirrorlist={repo.mirrorlist}" if repo.mirrorlist else f"baseurl={repo.baseurl}")
        lines.append(f"gpgcheck={int(repo.gpgcheck)}")
        if repo.gpgkey:
            lines.append(f"gpgkey={repo.gpgkey}")
        if repo.priority is not None:
            lines.append(f"priority={repo.priority}")
        lines.append("")
    return "\n".join(lines)


def private_home(path: Path, dbpath: str | Path = DBPATH, tmppath: Path | None = None) -> dict[str, str]:
    """The environment that makes rpm (under dnf) keep its database in ``dbpath`` (the root's
    /var/lib/rpm by default) and read no ~/.rpmmacros of the user's.  ``tmppath``: where rpmbuild on
    the host writes its scripts (by default /var/tmp, where a failed build leaves them); never set for
    an install into a root, whose scriptlets run inside it."""
    path.mkdir(parents=True, exist_ok=True)
    macros = f"%_dbpath {dbpath}\n"
    if tmppath is not None:
        tmppath.mkdir(parents=True, exist_ok=True)
        macros += f"%_tmppath {tmppath}\n"
    (path / ".rpmmacros").write_text(macros)
    return {"HOME": str(path)}


def install_argv(root: Path, conf: Path, release: str, packages: Sequence[str],
                 exclude: Sequence[str] = ()) -> list[str]:
    # --refresh: repositories (ours above all) may have changed since the cache was filled
    return ["dnf", "-y", f"--installroot={root}", f"--releasever={release}", f"--config={conf}", "--noplugins",
            "--refresh", *(f"--exclude={name}" for name in exclude), "install", *packages]


PACKAGES_HINT = "fix 'packages' (or add the repository that has them)"


def install(root: Path, repos: Sequence[Repo], release: str, packages: Sequence[str], scratch: Path,
            cache: Path, log_path: Path, where: str, exclude: Sequence[str] = (),
            what: str = "package(s)", hint: str = PACKAGES_HINT) -> None:
    """``dnf --installroot`` ``packages`` from ``repos`` into ``root``.

    Packages dnf cannot find are one UserError: "<where>: <what> X, Y not found ...", with ``hint``.

    dnf keeps its cache inside the install root (``/var/cache/dnf``); the persistent ``cache`` is
    moved in for the run and back out after it (a rename: both are in the work dir).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "repos.d").mkdir(exist_ok=True)
    conf = scratch / "dnf.conf"
    conf.write_text(config(repos, scratch / "repos.d"))
    inside_root = Root(root)
    inside_root.mkdir("/var/cache")
    inside = inside_root.resolve("/var/cache/dnf")  # resolved inside the root: never a link to the host's
    if cache.is_dir() and not inside.exists():
        shutil.move(cache, inside)
    try:
        runner.run(install_argv(root, conf, release, packages, exclude), log_path=log_path,
                   env=private_home(scratch / "home"))
    except runner.CommandFailed as exc:
        text = "\n".join(exc.error_lines + exc.tail)
        missing = sorted(set(_NO_MATCH.findall(text)))
        if missing:
            raise UserError(f"{where}: {what} {', '.join(missing)} not found in the configured repositories",
                            hint=hint, details=exc.details) from None
        raise
    finally:
        if inside.is_dir():
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.move(inside, cache)


def make_repo(directory: Path, packages: Sequence[Path], log_path: Path) -> Path:
    """A fresh repository in ``directory`` holding copies of ``packages`` (createrepo_c)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for package in packages:
        shutil.copyfile(package, directory / package.name)
    runner.run(["createrepo_c", "--quiet", "--no-database", str(directory)], log_path=log_path)
    return directory


def query(root: Path) -> list[dict[str, str]]:
    """Every package in the root's rpm database (rpm's own key ``gpg-pubkey`` entries left out)."""
    out = runner.output(["rpm", f"--root={root}", f"--dbpath={DBPATH}", "-qa", "--qf", _QUERY_FORMAT])
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]
    return [{"package": n, "version": v, "arch": a} for n, v, a in sorted(rows) if n != "gpg-pubkey"]


def hold(root: Path, names: Sequence[str]) -> None:
    """Keep ``names`` as installed: the root's dnf excludes them from every repository."""
    r = Root(root)
    conf = "/etc/dnf/dnf.conf"
    lines = r.read_text(conf).splitlines() if r.exists(conf) else ["[main]"]
    section, main_at, exclude_at = "", None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            if section == "[main]":
                main_at = i
        elif section == "[main]" and re.match(r"(excludepkgs|exclude)\s*=", stripped):
            exclude_at = i
    if exclude_at is not None:
        key, _, value = lines[exclude_at].partition("=")
        have = value.replace(",", " ").split()
        lines[exclude_at] = f"{key.strip()}={' '.join([*have, *(n for n in names if n not in have)])}"
    elif main_at is not None:
        lines.insert(main_at + 1, f"excludepkgs={' '.join(names)}")
    else:
        lines = ["[main]", f"excludepkgs={' '.join(names)}", *lines]
    r.write_text(conf, "\n".join(lines) + "\n")


def name_nevra(package: Path, root: Path) -> tuple[str, str]:
    """(name, ``name-[epoch:]version-release.arch``) of a package file: the second is what dnf
    installs by exact version, whatever a repository has of that name.  rpm opens a database even to
    read a package file: ``root``'s, never a ~/.rpmdb of the host user's."""
    name, nevra = runner.output(["rpm", f"--root={root}", f"--dbpath={DBPATH}", "--nosignature", "-qp", "--qf",
                                 _NAME_NEVRA, str(package)]).strip().split("\t")
    return name, nevra


@dataclass(frozen=True)
class BuildRoot:
    """A root of an EL release made with dnf for one build: its ``packages`` (a compiler) from the
    distribution's repositories, and the packages a build hands in from a repository of their own
    that wins every name it has (priority 1) -- the headers and libc the build compiles against are
    those, not the distribution's.  The guest tests' build root on EL (builder.stages.guesttests)."""

    repos: tuple[Repo, ...]
    release: str
    arch: str
    packages: tuple[str, ...]
    scratch: Path  # dnf's configuration and the handed-in repository, for one build
    cache: Path  # dnf's package cache, kept between builds
    where: str  # the settings file that names the repositories

    @property
    def key(self) -> str:
        """What the root is made from (the repositories' contents aside: they are not pinned)."""
        return keys.compute({"tool": "dnf", "repos": [[r.name, r.baseurl, r.mirrorlist, r.gpgcheck, r.priority]
                                                      for r in self.repos],
                             "release": self.release, "arch": self.arch, "packages": list(self.packages)})

    def check(self) -> None:
        """The host tools, before any build (the repositories are the distro's: its check probes them)."""
        hosttools.require(["dnf", "rpm", "createrepo_c"], "an EL build root (dnf --installroot)")

    def make(self, root: Path, packages: Sequence[Path], log_path: Path) -> Chroot:
        """The root at ``root`` (which must not exist): ``packages`` installed by exact version, the
        compiler and what they all need from the distribution's repositories."""
        root.mkdir(parents=True)
        handed = make_repo(self.scratch / "packages", packages, log_path)
        ours = Repo("isobuild-build", baseurl=f"file://{handed}", gpgcheck=False, priority=1)
        wanted = [*self.packages, *(name_nevra(p, root)[1] for p in packages)]
        try:
            with log.stage("buildroot.dnf", release=self.release, packages=wanted):
                install(root, [*self.repos, ours], self.release, wanted, self.scratch / "dnf", self.cache, log_path,
                        self.where, what="build root package(s)")
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return Chroot(root, log_path)
