"""``isobuild patches``: make a quilt series from git, check it, refresh it.

``generate`` turns the commits between a base and a head of a git branch
into numbered ``NNNN-subject.patch`` files (``git format-patch``: commit
message headers, real applicable diffs) plus ``series``, swapped into the
patch directory in one rename so a failure leaves the old series in place.

``check`` applies a component's series to a fresh pristine tree the way the
build does (real quilt, isolated from the user's quiltrc, fuzz 0) and says
per patch: clean, offset (applies, at shifted lines), fuzz (applies only when
context lines are ignored: the build refuses it) or fails (with file and
hunk).  The pristine tree is extracted once per source (keyed by its
identity: the tarball's sha256 or the git commit) and never written to:
every check copies out just the files the series names (see sparse_copy).

``refresh`` rewrites offset patches (and, with ``accept_fuzz``, fuzz ones)
with ``quilt refresh`` so they apply exactly, keeping their headers.

A component (kernel, glibc) is a ``Component``: where its series lives and
how to make the pristine tree the series applies to.  The glibc one comes
from ``builder/stages/glibc.py``: its ``pristine_tree(project) -> quilt.Pristine``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.infra import atomic, keys, lock, log, paths, runner
from builder.infra.config import Project
from builder.infra.digests import sha256_file
from builder.infra.errors import InfraError, UserError
from builder.stages import glibc
from builder.tools import quilt, sources

PRISTINE_VERSION = 1
# The most fuzz ``check`` tries before calling a patch "fails": GNU patch's
# own default, and with the usual 3 lines of context the most that still
# leaves one context line on each side of a change.
MAX_FUZZ = 2
STATUSES = ("clean", "offset", "fuzz", "fails")
_NAME_MAX = 64  # git format-patch's default --filename-max-length
_SUFFIX = ".patch"
# Our own quilt metadata directory: a pristine tree may carry a .pc of its own
# (Debian's glibc records its applied series there), which is not our stack.
QUILT_PC = ".pc-isobuild"

# --- components ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    name: str
    patch_dir: Callable[[Project], Path]  # the configured series directory
    pristine: Callable[[Project], quilt.Pristine]


def _kernel_patch_dir(project: Project) -> Path:
    return project.input_dir(project.settings.kernel.patches, "kernel.patches")


def _kernel_pristine(project: Project) -> quilt.Pristine:
    digests = project.digests()
    source = sources.resolve(project, project.settings.kernel.source, digests)
    digests.save()
    return quilt.Pristine(source.identity, source.label,
                    lambda dest, log_path: sources.extract(source, dest, log_path))


def _glibc_patch_dir(project: Project) -> Path:
    return project.input_dir(project.settings.glibc.patches, "glibc.patches")


def _glibc_pristine(project: Project) -> quilt.Pristine:
    return glibc.pristine_tree(project)


COMPONENTS: dict[str, Component] = {
    "kernel": Component("kernel", _kernel_patch_dir, _kernel_pristine),
    "glibc": Component("glibc", _glibc_patch_dir, _glibc_pristine),
}


def output_dir(project: Project, value: str) -> Path:
    """``patches generate --out``: a directory in the project (it may not exist yet)."""
    return paths.project_input(project.root, value, "--out", "patches generate", "dir", required=False)


def selected(choice: str, project: Project) -> list[Component]:
    """``all`` is the kernel, and glibc when the project builds it (glibc.enabled)."""
    if choice != "all":
        return [COMPONENTS[choice]]
    return [c for c in COMPONENTS.values() if c.name != "glibc" or project.settings.glibc.enabled]


# --- generate -----------------------------------------------------------------------------


def title(message: str) -> str:
    """A commit's title as git format-patch names the file after it: the first non-blank line."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def slug(subject: str) -> str:
    """git's sanitized subject: runs of anything but ``[A-Za-z0-9._]`` become
    one ``-``, runs of ``.`` one ``.``, no leading separator, no trailing
    ``.`` or ``-`` (git pretty.c: format_sanitized_subject)."""
    out: list[str] = []
    pending_dash = False
    previous = ""
    for ch in subject:
        if ch.isascii() and (ch.isalnum() or ch in "._"):
            if ch == "." and previous == ".":
                continue
            if pending_dash and out:
                out.append("-")
            pending_dash = False
            out.append(ch)
            previous = ch
        else:
            pending_dash = True
            previous = ""
    return "".join(out).rstrip(".-")


def patch_filename(number: int, subject: str) -> str:
    """``NNNN-slug.patch``, cut to git format-patch's default 64 characters."""
    stem = f"{number:04d}-{slug(subject)}"
    return stem[:_NAME_MAX - len(_SUFFIX) - 1] + _SUFFIX


def series_text(names: list[str], comment: list[str]) -> str:
    return "".join(f"# {line}\n" for line in comment) + "".join(f"{name}\n" for name in names)


@dataclass(frozen=True)
class Generated:
    name: str
    commit: str
    subject: str


def _open_repo(path: Path) -> Any:
    import git  # gitpython; only generate needs it

    if not path.exists():
        raise UserError(f"{path}: --repo not found", hint="give the path of a git repository")
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UserError(f"{path}: not a git repository",
                        hint="give the top directory of a git checkout (or a bare repository)") from None


def _commit(repo: Any, path: Path, ref: str, option: str) -> Any:
    import git  # gitpython: only generate needs it

    try:
        return repo.commit(ref)
    except (git.BadName, git.BadObject, ValueError):
        raise UserError(f"{path}: {option} {ref!r} is not a commit in this repository",
                        hint="use a branch, tag or commit id that exists there (git log --oneline)") from None


def commit_range(repo_path: Path, base: str, head: str) -> tuple[Any, Any, list[Any]]:
    """(repo, base commit, commits base..head oldest first); refuses what cannot be a quilt series."""
    repo = _open_repo(repo_path)
    base_c = _commit(repo, repo_path, base, "--base")
    head_c = _commit(repo, repo_path, head, "--head")
    if not repo.is_ancestor(base_c, head_c):
        raise UserError(
            f"{repo_path}: --base {base} ({base_c.hexsha[:12]}) is not an ancestor of --head {head}",
            hint=f"the patches would not apply to {base}: rebase the branch onto it first "
                 f"(git rebase {base} {head}), or use the commit it forked from (git merge-base)")
    commits = list(repo.iter_commits(f"{base_c.hexsha}..{head_c.hexsha}", reverse=True))
    if not commits:
        raise UserError(f"{repo_path}: no commits between --base {base} and --head {head}",
                        hint="--base is where the branch forked, --head its tip; nothing to turn into patches")
    merges = [c for c in commits if len(c.parents) > 1]
    if merges:
        first = merges[0]
        raise UserError(
            f"{repo_path}: {base}..{head} contains merge commit {first.hexsha[:12]} "
            f"({title(first.message)!r}); a quilt series is a linear stack of patches",
            hint=f"linearize the branch first, e.g. git rebase {base} (replays the merged commits one by one "
                 "and drops the merges), then generate again",
            details=[f"merge {m.hexsha[:12]} {title(m.message)}" for m in merges])
    return repo, base_c, commits


_BINARY_FILE = re.compile(r"^diff --git a/(.+?) b/.*\n(?:(?!diff --git ).*\n)*?GIT binary patch$", re.M)


def format_patches(repo: Any, base: Any, commits: list[Any], log_path: Path) -> list[tuple[Generated, str]]:
    """Each commit as a ``git format-patch`` mail, in order, named by our rules."""
    with tempfile.TemporaryDirectory(prefix="isobuild-format-patch-") as tmp:
        # Isolated from the user's git config (diff.noprefix, format.signature...):
        # what lands in the series must not depend on whose machine made it.
        runner.run(["git", "--git-dir", repo.git_dir, "format-patch", "--numbered", "--no-signature",
                    "--no-stat", "--no-renames", "--no-cover-letter", "--no-thread", "--no-attach",
                    "--src-prefix=a/", "--dst-prefix=b/", "--suffix=.patch", "-o", tmp,
                    f"{base.hexsha}..{commits[-1].hexsha}"],
                   env={"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}, log_path=log_path)
        by_sha: dict[str, str] = {}
        for f in Path(tmp).iterdir():
            text = f.read_text(encoding="utf-8", errors="surrogateescape")
            m = re.match(r"From ([0-9a-f]{40}) ", text)
            if m:
                by_sha[m.group(1)] = text
    out: list[tuple[Generated, str]] = []
    for number, c in enumerate(commits, 1):
        subject = title(c.message)
        text = by_sha.get(c.hexsha, "")
        if "\ndiff --git " not in text:
            raise UserError(f"commit {c.hexsha[:12]} ({subject!r}) changes nothing; a patch must change a file",
                            hint="drop the empty commit (git rebase -i) and generate again")
        if m := _BINARY_FILE.search(text):
            raise UserError(
                f"commit {c.hexsha[:12]} ({subject!r}) changes binary file {m.group(1)}: quilt applies patches "
                "with GNU patch, which cannot apply binary diffs",
                hint="keep binary files out of the series (or make them text), then generate again")
        out.append((Generated(patch_filename(number, subject), c.hexsha, subject), text))
    return out


def _listed(patch_dir: Path) -> set[str]:
    """Names an existing series lists (leniently: a broken series is being replaced)."""
    series = patch_dir / "series"
    if not series.is_file():
        return set()
    return {line.split("#", 1)[0].split()[0] for line in series.read_text(errors="replace").splitlines()
            if line.split("#", 1)[0].strip()}


def replace_series(patch_dir: Path, files: list[tuple[str, str]], comment: list[str]) -> None:
    """Make ``patch_dir`` hold these patches and their series, in one rename.

    Files the old series did not list (a config fragment, a README) are kept.
    The new directory is built beside the old one and swapped in only when
    complete: a failure leaves the old series as it was.
    """
    old = _listed(patch_dir) | {"series"}
    with atomic.new_dir(patch_dir) as tmp:
        tmp.chmod((patch_dir.stat().st_mode & 0o7777) if patch_dir.is_dir() else 0o755)
        if patch_dir.is_dir():
            for src in sorted(patch_dir.rglob("*")):
                rel = src.relative_to(patch_dir).as_posix()
                if rel in old or (src.is_dir() and not src.is_symlink()):
                    continue
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst, follow_symlinks=False)
        for name, text in files:
            (tmp / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        (tmp / "series").write_text(series_text([n for n, _ in files], comment), encoding="utf-8")


def generate(repo_path: Path, base: str, head: str, out_dir: Path, log_path: Path) -> list[Generated]:
    repo, base_c, commits = commit_range(repo_path, base, head)
    made = format_patches(repo, base_c, commits, log_path)
    base_sha, head_sha = base_c.hexsha, commits[-1].hexsha
    comment = [f"Generated by 'isobuild patches generate' from {base} ({base_sha[:12]})..{head} ({head_sha[:12]}).",
               "Applied in order with quilt at fuzz 0; regenerate rather than edit by hand."]
    replace_series(out_dir, [(g.name, text) for g, text in made], comment)
    log.get().info("patches.generated", out=str(out_dir), patches=len(made), base=base_sha[:12], head=head_sha[:12])
    return [g for g, _ in made]


# --- reading quilt/patch output -----------------------------------------------------------


@dataclass(frozen=True)
class Hunk:
    """A hunk that did not apply exactly where the patch says."""

    file: str | None
    hunk: int
    line: int
    offset: int = 0
    fuzz: int = 0

    def describe(self) -> str:
        how = [f"offset {self.offset:+d} line{'s' if abs(self.offset) != 1 else ''}"] if self.offset else []
        how += [f"fuzz {self.fuzz}"] if self.fuzz else []
        return f"{self.file or '?'} hunk #{self.hunk} at {self.line} ({', '.join(how)})"


_SUCCEEDED = re.compile(r"Hunk #(\d+) succeeded at (\d+)(?: with fuzz (\d+))?(?: \(offset (-?\d+) lines?\))?\.")


def split_sections(output: str, names: list[str]) -> list[tuple[str, list[str]]]:
    """quilt's output cut at each ``Applying patch NAME``, NAME mapped to a series name."""
    sections: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        m = re.match(r"Applying patch (.+)$", line)
        if m:
            printed = m.group(1).strip()
            name = printed if printed in names else next((n for n in names if printed.endswith("/" + n)), printed)
            sections.append((name, []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def hunks(lines: list[str]) -> list[Hunk]:
    """Hunks GNU patch applied at an offset or with fuzz."""
    out: list[Hunk] = []
    current: str | None = None
    for line in lines:
        if m := re.match(r"patching file (.+)$", line):
            current = m.group(1).strip().strip("'\"")
        elif m := _SUCCEEDED.match(line):
            out.append(Hunk(current, int(m.group(1)), int(m.group(2)), int(m.group(4) or 0), int(m.group(3) or 0)))
    return out


def classify(found: list[Hunk], failures: list[quilt.Failure]) -> str:
    if failures:
        return "fails"
    if any(h.fuzz for h in found):
        return "fuzz"
    return "offset" if any(h.offset for h in found) else "clean"


def worst(statuses: list[str]) -> str:
    return max(statuses, key=STATUSES.index, default="clean")


# --- check / refresh ----------------------------------------------------------------------


@dataclass
class PatchResult:
    name: str
    status: str  # one of STATUSES
    hunks: list[Hunk] = field(default_factory=list)
    failures: list[quilt.Failure] = field(default_factory=list)
    after: str | None = None  # checked on top of this failing patch (applied with its rejects, or left out)

    def details(self) -> list[str]:
        out = [f.describe() for f in self.failures] + [h.describe() for h in self.hunks]
        if self.after:
            out.append(f"(checked on top of {self.after}, which fails)")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "hunks": [dataclasses.asdict(h) for h in self.hunks],
                "failures": [dataclasses.asdict(f) for f in self.failures], "after": self.after}


@dataclass
class Report:
    component: str
    source: str
    patch_dir: Path
    results: list[PatchResult]
    seconds: dict[str, float] = field(default_factory=dict)
    refreshed: list[str] | None = None  # None: not a refresh
    not_refreshed: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """What the series looks like now (refreshed patches apply exactly)."""
        done = set(self.refreshed or [])
        return worst([r.status for r in self.results if r.name not in done])

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"component": self.component, "source": self.source,
                                "patch_dir": str(self.patch_dir), "status": self.status,
                                "seconds": self.seconds, "patches": [r.as_dict() for r in self.results]}
        if self.refreshed is not None:
            data.update(refreshed=self.refreshed, not_refreshed=self.not_refreshed)
        return data


@dataclass
class _Quilt:
    """quilt in one scratch tree, isolated from the user's quiltrc and QUILT_* settings."""

    tree: Path
    patch_copy: Path
    log_path: Path

    def run(self, *args: str, check: bool = False) -> runner.Result:
        env = {**quilt.quilt_env(self.patch_copy), "QUILT_PC": QUILT_PC}  # inherited QUILT_* blanked there
        return runner.run(["quilt", "--quiltrc", "-", *args], cwd=self.tree, env=env, log_path=self.log_path,
                          capture=True, check=check)

    def top(self) -> str:
        return self.run("top").output.strip()

    def drop(self, name: str) -> None:
        """Leave a patch quilt cannot apply even by force out of the staged series."""
        series = self.patch_copy / "series"
        kept = [line for line in series.read_text().splitlines() if line.split()[0] != name]
        series.write_text("".join(f"{line}\n" for line in kept))


def apply_all(q: _Quilt, names: list[str]) -> list[PatchResult]:
    """Push the staged series at fuzz 0, classifying each patch.

    ``quilt push -a`` runs until a patch does not apply at fuzz 0; that one is
    pushed again by force with fuzz up to MAX_FUZZ: if it then applies with no
    reject it is "fuzz", otherwise "fails" (its rejected hunks named).  Forcing
    it in lets the rest of the series be checked on top of as much of it as
    applies, so one run reports every patch.
    """
    results: dict[str, PatchResult] = {}
    blocker: str | None = None
    while len(results) < len(names):
        before = len(results)
        r = q.run("push", "-a", "--fuzz=0")
        sections = split_sections(r.output, names)
        stuck = sections[-1][0] if r.returncode != 0 and sections else None
        for name, lines in sections:
            if name != stuck:
                results[name] = PatchResult(name, classify(hunks(lines), []), hunks(lines), after=blocker)
        if stuck is not None:
            forced = q.run("push", "-f", f"--fuzz={MAX_FUZZ}")
            lines = next((ls for n, ls in split_sections(forced.output, names) if n == stuck), [])
            failures = [dataclasses.replace(f, patch=stuck)
                        for f in quilt.parse_push_output("\n".join(lines))]
            found = hunks(lines)
            if not failures and (forced.returncode != 0 or not any(h.fuzz for h in found)):
                # refused at fuzz 0 for no hunk's sake (a file to create exists...): say what quilt said
                said = [ln for ln in sections[-1][1] + lines if ln.strip() and not ln.startswith("Now at")]
                failures = [quilt.Failure(stuck, None, None, None, said[0] if said else "does not apply")]
            results[stuck] = PatchResult(stuck, classify(found, failures), found, failures, after=blocker)
            if failures:
                blocker = blocker or stuck
                if q.top() == stuck:
                    # quilt marks a forced patch "needs refresh" and pushes nothing on top of
                    # it until then; this scratch stack only needs the rest checked on top.
                    (q.tree / QUILT_PC / f"{stuck}~refresh").unlink(missing_ok=True)
                else:
                    q.drop(stuck)
        if len(results) == before:
            raise InfraError("quilt push made no progress on the staged series",
                             details=[*r.output.splitlines()[-20:], f"full log: {q.log_path}"])
    return [results[n] for n in names]


_QUILT_LOSES = re.compile(r"^(old mode |new mode |rename from |copy from |GIT binary patch|new file mode (?!100644))",
                          re.M)


def refresh_all(q: _Quilt, series: list[quilt.Patch], results: list[PatchResult],
                accept_fuzz: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    """Re-push the series in a fresh scratch tree and ``quilt refresh`` each
    offset (and, if accepted, fuzz) patch when it is on top; return
    (new bytes per refreshed patch, reason per patch left alone).  Nothing
    after the first patch that is not refreshed into applying exactly is
    touched: its context would come from a tree the build never sees."""
    targets = {"offset", "fuzz"} if accept_fuzz else {"offset"}
    new: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    blocker: str | None = None
    applied = 0
    for i, (p, res) in enumerate(zip(series, results, strict=True)):
        fails = "fails: " + "; ".join(f.describe() for f in res.failures)
        if blocker is not None:
            if res.status != "clean":
                skipped[p.name] = fails if res.status == "fails" else \
                    f"comes after {blocker}, which does not apply exactly"
            continue
        if res.status == "fails" or (res.status == "fuzz" and not accept_fuzz):
            blocker = p.name
            skipped[p.name] = fails if res.status == "fails" else \
                "applies only with fuzz (refresh with --accept-fuzz after reviewing it)"
            continue
        if res.status not in targets:
            continue
        # the patches below this one in one push (a count: a patch name could look like one)
        if i > applied:
            fuzz = MAX_FUZZ if any(r.status == "fuzz" for r in results[applied:i]) else 0
            q.run("push", f"--fuzz={fuzz}", str(i - applied), check=True)
        q.run("push", f"--fuzz={MAX_FUZZ if res.status == 'fuzz' else 0}", check=True)
        applied = i + 1
        text = p.path.read_text(encoding="utf-8", errors="replace")
        why = None
        if _QUILT_LOSES.search(text):
            why = "has git mode/rename/binary headers that quilt refresh would drop: regenerate it from git " \
                  "or refresh it by hand"
        elif p.strip not in (0, 1):
            why = f"-p{p.strip} patches are not refreshed (quilt refresh writes -p0 or -p1)"
        if why:
            skipped[p.name] = why
            if res.status == "fuzz":  # still needs fuzz: what comes after is no more refreshable than above
                blocker = p.name
            continue
        q.run("refresh", "--no-timestamps", "--no-index", "-p", "ab" if p.strip == 1 else "0", check=True)
        new[p.name] = (q.patch_copy / p.name).read_bytes()
    return new, skipped


def _pristine_tree(project: Project, component: str, pristine: quilt.Pristine, log_path: Path) -> Path:
    """The cached pristine tree for this source, made once (atomically)."""
    root = project.work_dir / "patches" / "pristine"
    key = keys.compute({"version": PRISTINE_VERSION, "component": component, "source": dict(pristine.identity)})
    final = root / f"{component}-{key[:16]}"
    if (final / "pristine.json").is_file():
        return final / "tree"
    # one cached tree per component: a new source replaces it (and what a killed run left)
    for old in [*root.glob(f"{component}-*"), *root.glob(f".{component}-*")]:
        shutil.rmtree(old, ignore_errors=True)
    with log.stage("patches.pristine", component=component, source=pristine.label), atomic.new_dir(final) as tmp:
        pristine.unpack(tmp / "tree", log_path)
        atomic.write_json(tmp / "pristine.json", {"component": component, "source": dict(pristine.identity),
                                                  "label": pristine.label})
    return final / "tree"


def sparse_copy(tree: Path, dest: Path, paths: set[str]) -> None:
    """Copy from ``tree`` to ``dest`` only the files the series names.

    GNU patch and quilt read nothing but the files a patch names (and whether
    they exist), so a tree holding exactly those behaves like the whole tree
    -- a copy in milliseconds instead of seconds for 80,000 kernel files, and
    the cached pristine tree is only ever read.
    """
    dest.mkdir(parents=True)
    for rel in sorted(paths):
        src = tree / rel
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)


@contextmanager
def _scratch(project: Project, component: str, tree: Path, series: list[quilt.Patch],
             log_path: Path) -> Iterator[_Quilt]:
    """The files the series touches, copied from the pristine tree, and a copy
    of the series; removed afterwards."""
    root = project.work_dir / "patches" / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{component}.{os.getpid()}.", suffix=".tmp", dir=root))
    try:
        sparse_copy(tree, tmp / "tree", {path for paths in quilt.vet(series).values() for path in paths})
        quilt.stage_copy(series, tmp / "patches")
        yield _Quilt(tmp / "tree", tmp / "patches", log_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(project: Project, component: Component, log_path: Path, *, refresh: bool = False,
          accept_fuzz: bool = False) -> Report:
    """Apply the component's series to a fresh tree; with ``refresh``, rewrite
    the patches that do not apply exactly (and can be refreshed)."""
    patch_dir = component.patch_dir(project)
    series = quilt.read_series(patch_dir)
    quilt.vet(series)  # no absolute or '..' paths, before anything is applied
    if not series:
        return Report(component.name, "-", patch_dir, [], refreshed=[] if refresh else None)
    pristine = component.pristine(project)
    seconds: dict[str, float] = {}
    with lock.held(project.work_dir / "patches", claim=False):
        shutil.rmtree(project.work_dir / "patches" / "scratch", ignore_errors=True)  # left by a killed run
        start = time.monotonic()
        tree = _pristine_tree(project, component.name, pristine, log_path)
        seconds["tree"] = round(time.monotonic() - start, 2)
        start = time.monotonic()
        with log.stage("patches.check", component=component.name, patches=len(series)), \
                _scratch(project, component.name, tree, series, log_path) as q:
            results = apply_all(q, [p.name for p in series])
        seconds["apply"] = round(time.monotonic() - start, 2)
        report = Report(component.name, pristine.label, patch_dir, results, seconds)
        if not refresh:
            return report
        start = time.monotonic()
        with log.stage("patches.refresh", component=component.name), \
                _scratch(project, component.name, tree, series, log_path) as q:
            new, report.not_refreshed = refresh_all(q, series, results, accept_fuzz)
        seconds["refresh"] = round(time.monotonic() - start, 2)
    for p in series:  # compute everything first, then write: nothing half-refreshed on error
        if p.name in new and sha256_file(p.path) != p.sha256:
            raise UserError(f"{p.path}: changed while it was being refreshed; nothing was written",
                            hint="run isobuild patches refresh again")
    for p in series:
        if p.name in new:
            atomic.write_bytes(p.path, new[p.name])
    report.refreshed = [p.name for p in series if p.name in new]
    return report


# --- reporting ----------------------------------------------------------------------------


def render(report: Report) -> str:
    took = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    lines = [f"{report.component}: {len(report.results)} patch(es) from {report.patch_dir} on {report.source}"
             + (f" ({took})" if took else "")]
    if not report.results:
        lines[0] = f"{report.component}: no patches in {report.patch_dir}"
    width = max((len(r.name) for r in report.results), default=0)
    for r in report.results:
        details = r.details()
        lines.append(f"  {r.status:<6}  {r.name.ljust(width)}  {details[0] if details else ''}".rstrip())
        lines += [f"  {'':<6}  {'':<{width}}  {d}" for d in details[1:]]
    if report.refreshed is not None:
        lines.append(f"  refreshed: {', '.join(report.refreshed) or 'none'}")
        lines += [f"  not refreshed: {name}: {why}" for name, why in report.not_refreshed.items()]
    return "\n".join(lines)


def verdict(reports: list[Report]) -> None:
    """Exit 0 when every series applies at fuzz 0 (offsets are a warning: the
    build accepts them); raise UserError (exit 2) on fuzz or fails: the build
    applies at fuzz 0 and would refuse the series."""
    bad = [(rep, r) for rep in reports for r in rep.results
           if r.status in ("fuzz", "fails") and r.name not in set(rep.refreshed or [])]
    offset = [r.name for rep in reports for r in rep.results
              if r.status == "offset" and r.name not in set(rep.refreshed or [])]
    if offset:
        log.get().warning("patches.offset", patches=offset,
                          hint="they apply at shifted lines (the build accepts that); "
                               "isobuild patches refresh makes them exact")
    if not bad:
        return
    rep, first = next(((a, b) for a, b in bad if b.status == "fails"), bad[0])
    fuzz_only = all(r.status == "fuzz" for _, r in bad)
    raise UserError(
        f"{rep.component} series: {first.name} {'fails' if first.status == 'fails' else 'needs fuzz'}"
        + (f": {first.details()[0]}" if first.details() else ""),
        hint=("the build applies at fuzz 0 and would refuse it; isobuild patches refresh --accept-fuzz rewrites "
              "it (review the diff: fuzz can put a hunk in the wrong place)") if fuzz_only else
             "rebase the patch on this source (quilt push -f, fix the rejects, quilt refresh), then check again",
        details=[f"{c.component}: {r.name}: {r.status}: {'; '.join(r.details())}" for c, r in bad])


def to_json(reports: list[Report]) -> str:
    return json.dumps({"status": worst([r.status for r in reports]), "components": [r.as_dict() for r in reports]},
                      indent=2)
