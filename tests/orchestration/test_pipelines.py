"""The CI pipeline definitions: valid for their platforms (check-jsonschema's vendored schemas
for GitHub workflows and GitLab CI) and consistent with isobuild itself -- every job they need
exists, every artifact path is one isobuild writes (taken from the code's layouts, not typed
twice), a download finds what an upstream job uploaded where it lands, every isobuild command
line parses with the real CLI, and the JUnit and report paths are where smoke and report write."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import cli, distros
from builder.commands import clean, report
from builder.infra.config import Project, load_project
from builder.stages import glibc, kernel, smoke
from builder.stages.base import records_dir
from builder.tools import console
from tests.conftest import records

REPO = Path(__file__).resolve().parents[2]
GITHUB = REPO / ".github" / "workflows" / "isobuild.yml"
GITLAB = REPO / ".gitlab-ci.yml"
STAGES = {"kernel", "glibc", "iso-debian", "iso-el", "smoke-debian", "smoke-el", "release", "report"}
INVOCATION = re.compile(r"\.venv/bin/isobuild\s+([^\n|;&>]*)")


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if not exe.exists():
        pytest.fail("check-jsonschema is not installed: pip install -e '.[dev]'")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    old = os.environ.get("ISOBUILD_WORK_DIR")
    os.environ["ISOBUILD_WORK_DIR"] = ".work"  # what both pipelines set
    try:
        yield load_project(REPO / "isobuild.yaml")
    finally:
        if old is None:
            del os.environ["ISOBUILD_WORK_DIR"]
        else:
            os.environ["ISOBUILD_WORK_DIR"] = old


def layout(project: Project) -> set[str]:
    """Every path a job may hand on, relative to the checkout, as the stages' code defines them."""
    def rel(path: Path) -> str:
        return path.relative_to(project.root).as_posix()

    k = kernel.Layout(project.work_dir / "kernel", project.settings.kernel.profile)
    g = glibc.Layout(project.work_dir / "glibc")
    paths = {rel(records_dir(project).parent), rel(k.artifact("KEY").parent), rel(g.artifact("KEY").parent),
             rel(project.logs_dir), rel(project.iso_dir), rel(report.default_path(project))}
    for name in distros.names(project):
        paths |= {rel(project.iso_dir / name)}
    return paths


def caches(project: Project) -> set[str]:
    """The source and package caches: work-dir entries that clean keeps and distclean removes."""
    assert {"sources", "cache"} <= set(clean.WORK_ENTRIES)
    return {(project.work_dir / name).relative_to(project.root).as_posix() for name in ("sources", "cache")}


def junit_names(tmp_path: Path, distro: str) -> list[str]:
    """Where smoke writes its JUnit XML, by running its writer."""
    verdict = console.Verdict("pass", [], {}, [], [], 1.0, "x.log", {"mode": "bios-cd"})
    smoke.write_results(tmp_path, distro, [verdict])
    return [p.name for p in tmp_path.glob("*.xml")]


def assert_command_parses(line: str, matrix: dict[str, list[str]], where: str) -> list[str]:
    """``line`` (what follows .venv/bin/isobuild) parses with the real CLI, for every matrix value;
    returns the verbs it used."""
    used = []
    for text in expand(line, matrix):
        args = shlex.split(text)
        used.append(args[0])
        try:
            cli.parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: 'isobuild {text}' does not parse with isobuild's CLI")
    return used


# the distros the variable-gated EL jobs build: each must be a real distros/<name>.yaml
EL_DISTROS = {"alma", "rocky"}


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for options in lists:
        out = [(*prefix, o) for prefix in out for o in options]
    return out if lists else []


def expand(text: str, matrix: dict[str, list[str]]) -> list[str]:
    """``text`` with ${{ matrix.x }} / $X put in for every matrix value."""
    out = []
    for combo in _product(list(matrix.values())) or [()]:
        t = text
        for key, value in zip(matrix, combo, strict=True):
            t = t.replace("${{ matrix." + key + " }}", value).replace(f"${key}", value)
        out.append(t)
    return out


def lca(paths: list[str]) -> str:
    """What actions/upload-artifact takes as an artifact's root: the least common ancestor of its
    paths (a directory for a path ending in '/' or without a suffix, else the file's directory)."""
    dirs = [Path(os.path.normpath(p)) if p.endswith("/") or not Path(p).suffix else Path(os.path.normpath(p)).parent
            for p in paths]
    common: list[str] = []
    for level in zip(*(d.parts for d in dirs), strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return os.path.join(*common) if common else "."


def known(path: str, allowed: set[str]) -> bool:
    norm = os.path.normpath(path)
    return norm in allowed


# --- validity for the platforms ----------------------------------------------------------------


def test_github_workflow_is_valid_for_github() -> None:
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        done = check_jsonschema("--builtin-schema", schema, str(GITHUB))
        assert done.returncode == 0, done.stdout + done.stderr


def test_gitlab_ci_is_valid_for_gitlab() -> None:
    done = check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(GITLAB))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schemas_do_catch_mistakes(tmp_path: Path) -> None:
    """The validation above is live: a misspelt key fails it."""
    gh = yaml.safe_load(GITHUB.read_text())
    gh["jobs"]["kernel"]["needz"] = ["glibc"]
    (tmp_path / "gh.yml").write_text(yaml.safe_dump(gh))
    assert check_jsonschema("--builtin-schema", "vendor.github-workflows", str(tmp_path / "gh.yml")).returncode != 0
    gl = yaml.safe_load(GITLAB.read_text())
    gl["kernel"]["artifacts"]["whenn"] = "always"
    (tmp_path / "gl.yml").write_text(yaml.safe_dump(gl))
    assert check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(tmp_path / "gl.yml")).returncode != 0
    del gh["jobs"]["kernel"]["needz"], gh["jobs"]["kernel"]["timeout-minutes"]
    (tmp_path / "gh.yml").write_text(yaml.safe_dump(gh))
    assert check_jsonschema("--builtin-schema", "custom.github-workflows-require-timeout",
                            str(tmp_path / "gh.yml")).returncode != 0


# --- GitHub Actions: structure ------------------------------------------------------------------


def gh_jobs() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(GITHUB.read_text())["jobs"])


def gh_needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def gh_matrix(job: dict[str, Any]) -> dict[str, list[str]]:
    return dict(job.get("strategy", {}).get("matrix", {}))


def upstream(jobs: dict[str, dict[str, Any]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(gh_needs(jobs[name]))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += gh_needs(jobs[n])
    return seen


def gh_uploads(jobs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """artifact name -> (job, paths), matrix expanded."""
    out: dict[str, tuple[str, list[str]]] = {}
    for name, job in jobs.items():
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("actions/upload-artifact@"):
                with_ = step["with"]
                paths = [p for p in str(with_["path"]).splitlines() if p.strip()]
                for combo in _product(list(gh_matrix(job).values())) or [()]:
                    env = dict(zip(gh_matrix(job), combo, strict=True))
                    artifact = expand(str(with_["name"]), {k: [v] for k, v in env.items()})[0]
                    assert artifact not in out, f"artifact {artifact} uploaded twice"
                    out[artifact] = (name, [expand(p, {k: [v] for k, v in env.items()})[0] for p in paths])
    return out


def test_github_jobs_are_the_stages_and_need_only_existing_jobs() -> None:
    jobs = gh_jobs()
    assert set(jobs) == STAGES
    for name, job in jobs.items():
        for need in gh_needs(job):
            assert need in jobs, f"{name} needs unknown job {need}"
        assert name not in upstream(jobs, name), f"{name} needs itself (a cycle)"
        for ref in re.findall(r"needs\.([\w-]+)\.result", str(job.get("if", ""))):
            assert ref in gh_needs(job), f"{name}: its if: reads needs.{ref} but does not need it"


def test_github_every_isobuild_job_bootstraps_first_and_its_commands_parse() -> None:
    used: set[str] = set()
    for name, job in gh_jobs().items():
        runs = [str(s.get("run", "")) for s in job["steps"]]
        first = next(i for i, r in enumerate(runs) if ".venv/bin/isobuild" in r)
        assert "./scripts/bootstrap.sh" in runs[:first], f"{name} runs isobuild before scripts/bootstrap.sh"
        for run in runs:
            for line in INVOCATION.findall(run):
                used.update(assert_command_parses(line.strip(), gh_matrix(job), f"{GITHUB.name} job {name}"))
    assert used == {"kernel", "glibc", "debian", "alma", "rocky", "test", "release", "report", "status"}


def test_github_artifacts_are_isobuild_paths_and_downloads_find_them(project: Project) -> None:
    jobs = gh_jobs()
    uploads = gh_uploads(jobs)
    allowed = layout(project)
    for artifact, (uploader, paths) in uploads.items():
        for path in paths:
            assert known(path, allowed), f"{uploader} uploads {path} as {artifact}: not a path isobuild writes"
    for name, job in jobs.items():
        for step in job["steps"]:
            if not str(step.get("uses", "")).startswith("actions/download-artifact@"):
                continue
            with_ = step["with"]
            for want in expand(str(with_.get("name") or with_["pattern"]), gh_matrix(job)):
                found = [a for a in uploads if fnmatch.fnmatchcase(a, want)]
                assert found, f"{name} downloads {want}, which no job uploads"
                for artifact in found:
                    origin, paths = uploads[artifact]
                    if "name" in with_:
                        assert origin in upstream(jobs, name), f"{name} downloads {artifact} without needing {origin}"
                    # upload-artifact roots an artifact at its paths' common ancestor: it lands right only there
                    assert os.path.normpath(str(with_["path"])) == lca(paths), (name, artifact)
                    if "pattern" in with_:
                        assert with_.get("merge-multiple") is True, f"{name}: a pattern download must merge"


def test_github_caches_junit_and_report_paths(project: Project, tmp_path: Path) -> None:
    jobs = gh_jobs()
    assert yaml.safe_load(GITHUB.read_text())["env"]["ISOBUILD_WORK_DIR"] == ".work"
    cached = [(n, s["with"]["path"]) for n, j in jobs.items() for s in j["steps"]
              if str(s.get("uses", "")).startswith("actions/cache@")]
    assert {p for _, p in cached} == caches(project)
    assert {n for n, _ in cached} == {"kernel", "iso-debian", "iso-el"}
    junit = [(n, s["with"]["report_paths"]) for n, j in jobs.items() for s in j["steps"]
             if "junit" in str(s.get("uses", ""))]
    assert junit == [("smoke-debian", "logs/" + junit_names(tmp_path, "debian")[0]),
                     ("smoke-el", "logs/smoke-${{ matrix.distro }}.xml")]
    out = report.default_path(project).relative_to(project.root).as_posix()
    assert any(f"isobuild report --out {out}" in str(s.get("run", "")) for s in jobs["report"]["steps"])
    assert gh_uploads(jobs)["report"] == ("report", [out])


def test_github_el_jobs_are_gated_and_name_real_distros(project: Project) -> None:
    jobs = gh_jobs()
    for name in ("iso-el", "smoke-el"):
        assert jobs[name]["if"] == "${{ vars.ISOBUILD_EL == 'true' }}"
        assert set(gh_matrix(jobs[name])["distro"]) == EL_DISTROS <= set(distros.names(project))
    assert "needs.smoke-el.result == 'skipped'" in jobs["release"]["if"], "a skipped EL job does not block a release"


# --- GitLab CI: structure -----------------------------------------------------------------------


def gl_jobs() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(GITLAB.read_text())
    reserved = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache",
                "before_script", "after_script"}
    return {k: v for k, v in data.items() if k not in reserved and not k.startswith(".")}


def gl_needs(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"job": n} if isinstance(n, str) else dict(n) for n in job.get("needs", [])]


def gl_matrix(job: dict[str, Any]) -> dict[str, list[str]]:
    matrix: dict[str, list[str]] = {}
    for entry in job.get("parallel", {}).get("matrix", []):
        matrix.update(entry)
    return matrix


def test_gitlab_jobs_are_the_stages_and_need_only_existing_earlier_jobs() -> None:
    data = yaml.safe_load(GITLAB.read_text())
    jobs = gl_jobs()
    assert set(jobs) == STAGES == set(gh_jobs()), "the same stages as jobs on both platforms"
    order = data["stages"]
    gated = {n for n, j in jobs.items() if "rules" in j}
    for name, job in jobs.items():
        assert job["stage"] in order
        for need in gl_needs(job):
            assert need["job"] in jobs, f"{name} needs unknown job {need['job']}"
            assert order.index(jobs[need["job"]]["stage"]) <= order.index(job["stage"]), (name, need)
            if need["job"] in gated and name not in gated | {"release", "report"}:
                pytest.fail(f"{name} needs {need['job']}, which is not always in the pipeline")
            if need["job"] in gated and name in ("release", "report"):
                assert need.get("optional") is True, f"{name} must need {need['job']} optionally"
    assert "./scripts/bootstrap.sh" in data["default"]["before_script"]
    assert data["variables"]["ISOBUILD_WORK_DIR"] == ".work"
    assert jobs["report"]["when"] == "always" and jobs["release"]["rules"]


def test_gitlab_commands_parse_and_artifacts_caches_junit_are_isobuild_paths(project: Project,
                                                                              tmp_path: Path) -> None:
    jobs = gl_jobs()
    allowed = layout(project)
    used: set[str] = set()
    for name, job in jobs.items():
        for line in job["script"]:
            for args in INVOCATION.findall(line):
                used.update(assert_command_parses(args.strip(), gl_matrix(job), f"{GITLAB.name} job {name}"))
        for path in job.get("artifacts", {}).get("paths", []):
            for concrete in expand(path, gl_matrix(job)):
                assert known(concrete, allowed), f"{name} keeps {concrete}: not a path isobuild writes"
        for cache in job.get("cache", []):
            assert {os.path.normpath(p) for p in cache["paths"]} <= caches(project), name
    assert used == {"kernel", "glibc", "debian", "alma", "rocky", "test", "release", "report", "status"}
    assert jobs["smoke-debian"]["artifacts"]["reports"]["junit"] == "logs/" + junit_names(tmp_path, "debian")[0]
    assert jobs["smoke-el"]["artifacts"]["reports"]["junit"] == "logs/smoke-$DISTRO.xml"
    out = report.default_path(project).relative_to(project.root).as_posix()
    assert f".venv/bin/isobuild report --out {out}" in jobs["report"]["script"]
    assert jobs["report"]["artifacts"]["paths"] == [out]
    for name in ("iso-el", "smoke-el"):
        assert jobs[name]["rules"] == [{"if": '$ISOBUILD_EL == "true"'}]
        assert set(gl_matrix(jobs[name])["DISTRO"]) == EL_DISTROS <= set(distros.names(project))


def test_kernel_artifacts_alone_let_the_next_job_reuse_the_kernel(fake_project: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """What the pipelines pass between jobs is enough: a fresh work dir holding only the kernel
    job's pieces (the artifacts and the project's records, no digest cache, no build tree) finds the
    kernel up to date instead of rebuilding it."""
    assert fake_project.run("kernel") == 0
    fresh = fake_project.work.with_name("fresh-work")
    for piece in ("kernel/artifacts", "projects"):
        shutil.copytree(fake_project.work / piece, fresh / piece, symlinks=True)
    settings = fake_project.settings()
    settings["work_dir"] = str(fresh)
    fake_project.write_settings(settings)
    capsys.readouterr()
    assert fake_project.run("kernel") == 0
    assert "is up to date" in capsys.readouterr().out
    assert (records(fake_project.root, fresh) / "current" / "kernel-ci-x86_64").is_symlink()
