"""Quilt patch series: parse, vet, apply.

``read_series`` reads ``series`` (comments, blank lines, per-line ``-pN``)
and checks every named patch exists.  ``vet`` refuses any patch that would
touch an absolute path or climb out of the tree with ``..`` -- before
anything is applied.  ``push`` applies the whole series with real quilt,
isolated from the user's quiltrc, at fuzz 0; a failure names the patch, the
file and the hunk, and the tree is rolled back to pristine.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from builder.infra import paths, runner
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError

_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_QUILT_ENV_KEEP = {"QUILT_PC": ".pc"}


@dataclass(frozen=True)
class Patch:
    name: str
    strip: int
    path: Path
    sha256: str
    series_line: int

    def identity(self) -> dict[str, object]:
        return {"name": self.name, "strip": self.strip, "sha256": self.sha256}


@dataclass(frozen=True)
class Failure:
    patch: str
    file: str | None
    hunk: int | None
    line: int | None
    reason: str

    def describe(self) -> str:
        where = self.file or "?"
        if self.hunk is not None:
            where += f" hunk #{self.hunk}" + (f" (at line {self.line})" if self.line else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Pristine:
    """The unpatched tree a series applies to, before it is made."""

    identity: Mapping[str, Any]  # what the tree is made from (tarball sha256, commit...): the cache key
    label: str  # for people: "linux-source-6.1 (linux-source-6.1.tar.xz)"
    # (dest, log_path): create ``dest`` (it does not exist yet) holding the tree, the
    # series' paths relative to its top; run once per identity, the result is cached
    unpack: Callable[[Path, Path], None]


def read_series(patch_dir: Path) -> list[Patch]:
    """The series in ``patch_dir``; a missing ``series`` file means no patches.

    Every patch must be a regular file inside ``patch_dir`` (a symlink that leads
    out of it is refused: the build would copy a host file into its tree)."""
    if not patch_dir.is_dir():
        raise UserError(f"{patch_dir}: patch directory not found",
                        hint="create it with a 'series' file, or set kernel.patches in isobuild.yaml")
    series = patch_dir / "series"
    if not series.exists() and not series.is_symlink():
        return []
    real_dir = patch_dir.resolve()
    if not series.resolve().is_relative_to(real_dir):
        raise UserError(f"{series}: the series file leads out of {patch_dir}")
    patches: list[Patch] = []
    seen: set[str] = set()
    for number, raw in enumerate(paths.read_text(series, "series file").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{series}:{number}"
        name, *options = line.split()
        strip = 1
        for opt in options:
            m = re.fullmatch(r"-p(\d)", opt)
            if not m:
                raise UserError(f"{where}: unsupported option {opt!r} for {name}",
                                hint="series lines are 'NAME' or 'NAME -pN'")
            strip = int(m.group(1))
        if name in seen:
            raise UserError(f"{where}: {name} is listed twice")
        seen.add(name)
        path = patch_dir / name
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise UserError(f"{where}: patch name {name!r} must be a path inside {patch_dir}")
        if not path.is_file():
            raise UserError(f"{where}: patch {name} not found in {patch_dir}" if not path.exists()
                            else f"{where}: patch {name} is not a regular file",
                            hint="add the file or remove the line from the series")
        if not path.resolve().is_relative_to(real_dir):
            raise UserError(f"{where}: patch {name} is a symlink to {path.resolve()}, outside {patch_dir}",
                            hint="put the patch itself in the patch directory")
        patches.append(Patch(name, strip, path, sha256_file(path), number))
    return patches


def _unquote(name: str) -> str:
    name = name.split("\t", 1)[0].rstrip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return name


def _git_names(line: str) -> list[str]:
    """The two names of a ``diff --git a/X b/Y`` line (quoted or not)."""
    rest = line[len("diff --git "):].strip()
    if rest.startswith('"'):
        m = re.match(r'("(?:[^"\\]|\\.)*")\s+(.+)$', rest)
        return [_unquote(m.group(1)), _unquote(m.group(2))] if m else [rest]
    # unquoted names may hold spaces: split where the second name starts with the same prefix
    half = rest.split(" ")
    for i in range(1, len(half)):
        a, b = " ".join(half[:i]), " ".join(half[i:])
        if a.split("/", 1)[-1] == b.split("/", 1)[-1]:
            return [a, b]
    return half[:1] + half[-1:]


def touched_paths(patch: Patch) -> list[str]:
    """Paths the patch names, after stripping, in the order they appear.

    Refuses, naming the patch and its line: absolute paths and ``..``, in any
    name it gives (``---``/``+++``, ``diff --git``, ``Index:``, renames and copies),
    raw or stripped; and symlinks it creates (``new file mode 120000``) whose
    target is absolute or climbs out of the tree.  Hunk bodies are skipped by
    their line counts, so a removed line that starts with ``-- `` is not
    mistaken for a file header.
    """
    lines = patch.path.read_text(encoding="utf-8", errors="replace").splitlines()
    found: list[str] = []
    old_left = new_left = 0
    symlink_at: tuple[str, int] | None = None  # (path, line) of a symlink the next hunk creates
    symlink_target: list[str] = []

    def add(raw: str, number: int, stripped_already: bool) -> None:
        if raw == "/dev/null":
            return
        _vet_path(patch, number, raw)
        stripped = raw if stripped_already else "/".join(PurePosixPath(raw).parts[patch.strip:])
        if stripped and stripped not in found:
            found.append(stripped)

    def close_symlink() -> None:
        nonlocal symlink_at
        if symlink_at is not None and symlink_target:
            _vet_symlink(patch, symlink_at[1], symlink_at[0], symlink_target[0])
        symlink_at = None
        symlink_target.clear()

    git_b: str | None = None
    for number, line in enumerate(lines, 1):
        if old_left > 0 or new_left > 0:
            if line.startswith("\\"):
                continue
            tag = line[:1]
            if tag in (" ", ""):
                old_left -= 1
                new_left -= 1
            elif tag == "-":
                old_left -= 1
            elif tag == "+":
                new_left -= 1
                if symlink_at is not None:
                    symlink_target.append(line[1:])
            if old_left <= 0 and new_left <= 0:
                close_symlink()
            continue
        m = _HUNK.match(line)
        if m:
            old_left = int(m.group(1) or 1) if m.group(1) != "0" else 0
            new_left = int(m.group(2) or 1) if m.group(2) != "0" else 0
            continue
        if line.startswith("diff --git "):
            close_symlink()
            names = _git_names(line)
            for raw in names:
                add(raw, number, False)
            git_b = "/".join(PurePosixPath(names[-1]).parts[patch.strip:]) if names else None
        elif line.startswith("Index: "):  # only a fallback name for GNU patch: vetted, not listed
            _vet_path(patch, number, line[len("Index: "):].strip())
        elif line.startswith(("--- ", "+++ ")):
            add(_unquote(line[4:]), number, False)
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            add(line.split(" ", 2)[2], number, True)
        elif re.match(r"(new file mode|new mode) 120000", line):
            symlink_at = (git_b or "?", number)
    close_symlink()
    return found


def _vet_path(patch: Patch, number: int, raw: str) -> None:
    p = PurePosixPath(raw)
    if p.is_absolute() or ".." in p.parts:
        raise UserError(
            f"{patch.path}:{number}: patch {patch.name} touches {raw!r}, outside the source tree",
            hint="patches may only name paths inside the tree (no leading '/', no '..'); fix the patch")


def _vet_symlink(patch: Patch, number: int, link: str, target: str) -> None:
    """A symlink the patch creates at ``link`` (tree-relative) must point inside the tree."""
    hint = "a patch may create symlinks only to relative paths inside the tree; fix the patch"
    if target.startswith("/"):
        raise UserError(f"{patch.path}:{number}: patch {patch.name} creates symlink {link} -> {target!r}, "
                        "an absolute path", hint=hint)
    depth = len(PurePosixPath(link).parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise UserError(f"{patch.path}:{number}: patch {patch.name} creates symlink {link} -> {target!r}, "
                            "which leads out of the source tree", hint=hint)


def vet(patches: list[Patch]) -> dict[str, list[str]]:
    """Check every patch before anything is applied; return touched paths per patch."""
    return {p.name: touched_paths(p) for p in patches}


def stage_copy(patches: list[Patch], dest: Path) -> None:
    """Copy the series and its patches to ``dest`` (what quilt will read)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    lines = []
    for p in patches:
        target = dest / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.path, target)
        lines.append(p.name if p.strip == 1 else f"{p.name} -p{p.strip}")
    (dest / "series").write_text("".join(f"{line}\n" for line in lines))


def quilt_env(patch_copy: Path) -> dict[str, str]:
    """quilt's environment: ours, with every inherited ``QUILT_*`` blanked.

    ``--quiltrc -`` keeps ~/.quiltrc out, but quilt still reads ``QUILT_SERIES``,
    ``QUILT_PATCH_OPTS`` and the rest from the environment; an empty value is
    quilt's default (its scripts use ``${VAR:=default}``)."""
    inherited = {name: "" for name in os.environ if name.startswith("QUILT_")}
    return {**inherited, "QUILT_PATCHES": str(patch_copy), **_QUILT_ENV_KEEP}


def push(tree: Path, patch_copy: Path, log_path: Path, *, rollback: bool = True, onto: str | None = None) -> list[str]:
    """Apply the staged series; return notes (offset hunks).  On failure roll
    back every applied patch (unless the tree is scratch: ``rollback=False``)
    and raise UserError naming patch/file/hunk and, if given, what it was
    applied ``onto``."""
    if not (patch_copy / "series").read_text().strip():
        return []
    argv = ["quilt", "--quiltrc", "-", "push", "-a", "--fuzz=0"]
    try:
        result = runner.run(argv, cwd=tree, env=quilt_env(patch_copy), log_path=log_path, capture=True)
    except runner.CommandFailed as exc:
        failures = parse_push_output(_log_tail_since_last_command(log_path), patch_copy)
        if rollback:
            pop_all(tree, patch_copy, log_path)
        if not failures:
            raise UserError("quilt push failed", hint=exc.hint, details=exc.details) from None
        first = failures[0]
        raise UserError(
            f"patch {first.patch} does not apply at fuzz 0{f' to {onto}' if onto else ''}: {first.describe()}",
            hint="refresh the patch against this source (quilt refresh) or fix the series"
                 + ("; the tree was rolled back" if rollback else ""),
            details=[f"{f.patch}: {f.describe()}" for f in failures] + [f"full log: {log_path}"],
        ) from None
    return [line for line in result.output.splitlines() if "succeeded at" in line and "offset" in line]


def pop_all(tree: Path, patch_copy: Path, log_path: Path) -> None:
    """Unapply everything quilt applied (restoring the pristine files).

    quilt removes the files a patch created but not the directories it made
    for them; those are pruned too, so the tree is really pristine.
    """
    if not (tree / ".pc").exists():
        return
    runner.run(["quilt", "--quiltrc", "-", "pop", "-a", "-f", "-q"], cwd=tree,
               env=quilt_env(patch_copy), log_path=log_path, check=False)
    shutil.rmtree(tree / ".pc", ignore_errors=True)
    staged = read_series(patch_copy) if (patch_copy / "series").exists() else []
    for rel in {path for p in staged for path in touched_paths(p)}:
        parent = (tree / rel).parent
        while parent != tree and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _log_tail_since_last_command(log_path: Path) -> str:
    text = log_path.read_text(errors="replace")
    idx = text.rfind("\n$ ")
    return text[idx:] if idx >= 0 else text


def parse_push_output(text: str, patch_dir: Path | None = None) -> list[Failure]:
    """Failures from ``quilt push`` / GNU patch output, patches named as in the
    series (quilt prints them relative to QUILT_PATCHES, ``patch_dir``)."""

    def name(raw: str) -> str:
        if patch_dir is not None and raw.startswith(f"{patch_dir}/"):
            return raw[len(str(patch_dir)) + 1:]
        return raw

    failures: list[Failure] = []
    patch = "?"
    current_file: str | None = None
    name_follows = False
    for line in text.splitlines():
        if m := re.match(r"Applying patch (?:patches/)?(.+)$", line):
            patch = name(m.group(1))
            current_file = None
        elif m := re.match(r"patching file (.+)$", line):
            current_file = m.group(1).strip("'\"")
        elif m := re.match(r"Hunk #(\d+) FAILED at (\d+)", line):
            failures.append(Failure(patch, current_file, int(m.group(1)), int(m.group(2)), "hunk does not apply"))
        elif m := re.match(r"can't find file to patch at input line (\d+)", line):
            failures.append(Failure(patch, current_file, None, int(m.group(1)), "file to patch not found"))
            name_follows = True  # GNU patch then quotes the patch's own header lines: '|--- a/x'
        elif name_follows and (m := re.match(r"\|(?:---|\+\+\+) (\S+)", line)) and m.group(1) != "/dev/null":
            failures[-1] = replace(failures[-1], file=m.group(1))
            name_follows = False
        elif m := re.search(r"malformed patch at line (\d+)", line):
            failures.append(Failure(patch, current_file, None, int(m.group(1)), "malformed patch"))
        elif "Reversed (or previously applied) patch detected" in line:
            failures.append(Failure(patch, current_file, None, None, "already applied (reversed patch)"))
        elif (m := re.match(r"Patch (?:patches/)?(\S+) does not apply", line)) and \
                not any(f.patch == name(m.group(1)) for f in failures):
            failures.append(Failure(name(m.group(1)), current_file, None, None, "does not apply"))
    return failures
