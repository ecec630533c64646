"""Source tarballs: Debian's linux-source package, a local tarball pinned by
sha256, or a git repository + ref (exported with ``git archive``).

Every kind resolves to a tarball on disk plus an identity for the stage key
(the tarball's sha256, or the git commit).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from builder.infra import atomic, runner
from builder.infra.config import Project, SourceSettings
from builder.infra.digests import DigestCache, sha256_bytes
from builder.infra.errors import InfraError, UserError


@dataclass(frozen=True)
class Source:
    tarball: Path
    identity: dict[str, str]
    label: str


def resolve(project: Project, settings: SourceSettings, digests: DigestCache, what: str = "kernel") -> Source:
    if settings.type == "debian":
        return _debian(settings.package, digests)
    if settings.type == "tarball":
        assert settings.path and settings.sha256
        return _tarball(project.path(settings.path), settings.sha256, digests, what)
    assert settings.url and settings.ref
    return _git(project, settings.url, settings.ref)


def _debian(package: str, digests: DigestCache) -> Source:
    candidates = sorted(Path("/usr/src").glob(f"{package}.tar.*"))
    if not candidates:
        raise InfraError(f"/usr/src/{package}.tar.*: Debian source package {package} is not installed",
                         hint=f"apt-get install {package}")
    tarball = candidates[0]
    return Source(tarball, {"kind": "debian", "package": package, "sha256": digests.sha256(tarball)},
                  f"{package} ({tarball.name})")


def _tarball(path: Path, expected: str, digests: DigestCache, what: str) -> Source:
    if not path.is_file():
        raise UserError(f"{path}: {what} source tarball not found",
                        hint=f"fix {what}.source.path in isobuild.yaml or put the file there")
    actual = digests.sha256(path)
    if actual != expected:
        raise UserError(f"{path}: checksum mismatch: isobuild.yaml pins sha256 {expected}, the file has {actual}",
                        hint="refusing to build an unverified source; fetch the right file or update the pin")
    return Source(path, {"kind": "tarball", "sha256": actual}, path.name)


def _git(project: Project, url: str, ref: str) -> Source:
    import git  # gitpython; imported here so other sources don't pay for it

    cache = project.work_dir / "sources" / "git" / sha256_bytes(url.encode())[:16]
    try:
        if cache.exists():
            repo = git.Repo(cache)
            repo.remote("origin").fetch(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], prune=True)
        else:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temp_path(cache)
            if tmp.exists():
                shutil.rmtree(tmp)
            repo = git.Repo.clone_from(url, tmp, bare=True, mirror=True)
            tmp.rename(cache)
            repo = git.Repo(cache)
    except git.GitCommandError as exc:
        raise InfraError(f"git source {url}: cannot fetch: {exc.stderr.strip() or exc}",
                         hint="check kernel.source.url and that the repository is reachable") from None
    try:
        commit = repo.commit(ref).hexsha
    except (git.BadName, ValueError):
        raise UserError(f"git source {url}: ref {ref!r} not found",
                        hint="fix kernel.source.ref (a branch, tag or commit that exists)") from None
    tarball = project.work_dir / "sources" / f"git-{commit}.tar"
    if not tarball.exists():
        tmp = atomic.temp_path(tarball)
        with tmp.open("wb") as f:
            repo.archive(f, commit, prefix="src/", format="tar")
        tmp.rename(tarball)
    return Source(tarball, {"kind": "git", "url": url, "commit": commit}, f"{url}@{ref} ({commit[:12]})")


def extract(source: Source, dest: Path, log_path: Path) -> None:
    """Unpack the tarball's single top directory into ``dest`` (atomically)."""
    with atomic.new_dir(dest) as tmp:
        runner.run(["tar", "-xf", source.tarball, "-C", tmp, "--strip-components=1"], log_path=log_path)
        if not (tmp / "Makefile").exists():
            raise UserError(f"{source.tarball}: no top-level directory with a Makefile in the tarball",
                            hint="a source tarball holds one directory (e.g. linux-6.1/) with the tree")
