"""The CI pipeline definitions: valid for their platforms (check-jsonschema's vendored schemas
for GitHub workflows and GitLab CI) and consistent with isobuild itself -- every job they need
exists, every artifact path is one isobuild writes (taken from the code's layouts, not typed
twice), a download finds what an upstream job uploaded where it lands, every isobuild command
line parses with the real CLI, and the JUnit and report paths are where smoke and report write.

Both pipelines run the Debian stages as a matrix over the arches distros/debian.yaml lists, so
each job is checked leg by leg (one leg per matrix combination, its ${{ matrix.x }} / $X put in):
every --arch is an arch isobuild knows and one its stage builds (the kernel profile has fragments
for it, a Debian-family distro or the distro itself lists it); every arch each distro lists has
its kernel, glibc, ISO and boot-check legs and no leg builds an arch none lists; a leg takes its
upstream pieces from the same arch's legs, the release and the report from every leg; and a
boot-check leg outlasts isobuild's own boot timeouts, which grow with the arch's TCG slowdown.

Both also build the package list's Debian source packages (isobuild pkg build, in build VMs of the
runner arch's Debian image): GitHub as a matrix of one leg per entry, read from a job's output
(isobuild pkg list --json; checked here with an entry of every kind the list takes), GitLab as
parallel shards (--shard CI_NODE_INDEX/CI_NODE_TOTAL).  Their scripts are run too, with the real
CLI and only 'pkg build' stubbed: the list job's output is the list, an empty shard succeeds
without building, and an artifact is named after its entry's source package."""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from builder import cli, distros, pipeline
from builder.commands import clean, pkg, report
from builder.distros.graph import Graph
from builder.infra.arch import ARCHES
from builder.infra.config import Project, load_project
from builder.infra.errors import ExitCode, IsobuildError
from builder.stages import glibc, kernel, smoke
from builder.stages.base import records_dir
from builder.tools import console, kconfig, pkglist
from tests.conftest import records

REPO = Path(__file__).resolve().parents[2]
GITHUB = REPO / ".github" / "workflows" / "isobuild.yml"
GITLAB = REPO / ".gitlab-ci.yml"
STAGES = {"kernel", "glibc", "iso-debian", "iso-el", "smoke-debian", "smoke-el", "release", "report"}
# the package builds: on GitHub a job reading the list and one leg per entry, on GitLab shards alone
# rebuild-check builds the Debian ISO and then builds it again from nothing to compare (not a stage of its own)
GH_JOBS = STAGES | {"pkg-matrix", "pkg-build", "rebuild-check"}
GL_JOBS = STAGES | {"pkg-build", "rebuild-check"}
VERBS = {"kernel", "glibc", "debian", "alma", "rocky", "test", "release", "report", "status", "pkg", "cache",
         "rebuild-check"}
# what follows .venv/bin/isobuild, up to a pipe, a list, a redirection or the end of a $(...)
INVOCATION = re.compile(r"\.venv/bin/isobuild\s+([^\n|;&>)]*)")
GH_MATRIX = re.compile(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}")  # ${{ matrix.arch }}
GH_STEP_OUTPUT = re.compile(r"\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}")  # ${{ steps.name.outputs.name }}
# a matrix dimension made from a job's output: ${{ fromJSON(needs.pkg-matrix.outputs.packages) }}
GH_FROM_OUTPUT = re.compile(r"\$\{\{\s*fromJSON\(\s*needs\.([\w-]+)\.outputs\.([\w-]+)\s*\)\s*\}\}")
# what such a dimension's legs are checked with: an entry of every kind the package list takes (a
# name, name=version with an epoch, a .dsc, a ./directory with a trailing slash), as pkg list prints them
SAMPLE_PACKAGES = ("hello", "zlib=1:1.2.13.dfsg-1", "./vendor/foo_1.0-1.dsc", "./src/my_tool/")
OUTPUT_SAMPLES = {("pkg-matrix", "packages"): SAMPLE_PACKAGES}
ARTIFACT_NAME_FORBIDDEN = set('":<>|*?\\/\r\n')  # actions/upload-artifact refuses these in a name
# the distro whose disk image the package builds' VMs boot (builder.cli._pkg_build names it inline)
PKG_DISTRO = "debian"
GL_MATRIX = re.compile(r"\$\[\[\s*matrix\.(\w+)\s*\]\]")  # $[[ matrix.ARCH ]] (needs:parallel:matrix)
# the distros the variable-gated EL jobs build: each must be a real distros/<name>.yaml
EL_DISTROS = {"alma", "rocky"}
# the cross glibc build's caches, <work>/cache/<name> (builder.stages.glibc names them inline)
GLIBC_CACHES = ("cross-roots", "archive")
RUNNER_ARCH = "x86_64"  # ubuntu-latest and the GitLab runner: arm64 and riscv64 are cross-built there
REFERENCE_CPUS = 2  # the host the boot times were measured on, and the fewest a hosted runner has
BOOTSTRAP_MINUTES = 15  # a smoke job's time besides its boots: scripts/bootstrap.sh, the artifacts
# a package build leg's time besides its build VM: scripts/bootstrap.sh, the Debian root and disk image
# pkg build makes from the downloaded kernel and glibc, the artifacts
PKG_SETUP_MINUTES = 30


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if not exe.exists():
        pytest.fail("check-jsonschema is not installed: pip install -e '.[dev]'")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The repository's project as a checkout the pipelines run in, copied: what planning writes
    under its work dir (.work, as both pipelines set it) never lands in this checkout."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copy(REPO / "isobuild.yaml", root)
    for sub in ("profiles", "patches", "distros", "kickstart"):
        shutil.copytree(REPO / sub, root / sub, ignore=shutil.ignore_patterns("*.lock"))
    old = os.environ.get("ISOBUILD_WORK_DIR")
    os.environ["ISOBUILD_WORK_DIR"] = ".work"  # what both pipelines set
    try:
        yield load_project(root / "isobuild.yaml")
    finally:
        if old is None:
            del os.environ["ISOBUILD_WORK_DIR"]
        else:
            os.environ["ISOBUILD_WORK_DIR"] = old


def rel(project: Project, path: Path) -> str:
    return path.relative_to(project.root).as_posix()


def layout(project: Project) -> set[str]:
    """Every path a job may hand on, relative to the checkout, as the stages' code defines them."""
    paths = {rel(project, records_dir(project).parent), rel(project, glibc.Layout(project.work_dir / "glibc")
                                                            .artifact("KEY").parent),
             rel(project, project.logs_dir), rel(project, project.iso_dir), rel(project, report.default_path(project))}
    for arch in ARCHES:
        paths.add(rel(project, kernel.Layout(project.work_dir / "kernel", project.settings.kernel.profile, arch)
                      .artifact("KEY").parent))
        paths.add(rel(project, pkg.pkgs_dir(project) / arch))
    for name in distros.names(project):
        paths |= {rel(project, project.iso_dir / name)}
    return paths


# the shared stage store both pipelines set (ISOBUILD_CACHE_STORE), and the stages whose entries
# their jobs keep in the CI system's cache: the two that take minutes to build
STORE = ".isobuild-store"
STORED_STAGES = {kernel.KernelStage.kind: "kernel", glibc.GlibcStage.kind: "glibc"}  # stage kind -> job


def caches(project: Project) -> set[str]:
    """The source and package caches: work-dir entries that clean keeps and distclean removes, and
    the cross glibc build's (its build-root tarballs and verified source packages) inside the latter;
    and the shared stage store's entries of the kernel and glibc stages."""
    assert {"sources", "cache"} <= set(clean.WORK_ENTRIES)
    code = inspect.getsource(glibc)
    for name in GLIBC_CACHES:
        assert f'"cache" / "{name}"' in code, f"builder/stages/glibc.py no longer keeps <work>/cache/{name}"
    return ({rel(project, project.work_dir / name) for name in ("sources", "cache")}
            | {rel(project, project.work_dir / "cache" / name) for name in GLIBC_CACHES}
            | {f"{STORE}/{kind}" for kind in STORED_STAGES})


def junit_name(tmp_path: Path, distro: str, arch: str) -> str:
    """Where smoke writes the JUnit XML of ``distro``'s ``arch`` image, by running its writer."""
    out = tmp_path / f"{distro}-{arch}"
    out.mkdir(exist_ok=True)
    verdict = console.Verdict("pass", [], {}, [], [], 1.0, "x.log", {"mode": "bios-cd"})
    smoke.write_results(out, smoke.results_name(distro, arch), [verdict])
    [name] = [p.name for p in out.glob("*.xml")]
    return name


def pkg_results(tmp_path: Path, arch: str) -> tuple[str, str]:
    """The names pkg build gives its results for ``arch`` (the JSON and the JUnit XML), by running its writer."""
    logs: Any = SimpleNamespace(logs_dir=tmp_path / f"pkg-{arch}")  # all write_results takes of a project
    json_path, xml_path = pkg.write_results(logs, arch, [])
    return json_path.name, xml_path.name


def pkg_distro() -> str:
    assert f'preflight_image(project, "{PKG_DISTRO}"' in inspect.getsource(cli._pkg_build), \
        f"builder/cli.py no longer builds packages in {PKG_DISTRO}'s image"
    return PKG_DISTRO


def build_minutes(project: Project, arch: str) -> float:
    """The longest one package's build VM of ``arch`` may take before isobuild gives up on it: its
    SSH wait (vm.ssh_timeout) and its build (pkg.timeout), each scaled by the arch's TCG slowdown."""
    settings = project.settings
    return (settings.vm.ssh_timeout + settings.pkg.timeout) * ARCHES[arch].tcg_slowdown / 60


def boot_minutes(project: Project, arch: str) -> float:
    """The longest isobuild's boot checks of an ``arch`` image can take before every mode has a
    verdict -- each boot hung until its timeout (smoke.timeout scaled by the arch's TCG slowdown)
    -- on a REFERENCE_CPUS-core runner, boots at once as smoke.boot_plan shares them out."""
    target, settings = ARCHES[arch], project.settings.smoke
    modes = smoke.modes_for(target)
    at_once, _ = smoke.boot_plan(len(modes), REFERENCE_CPUS, settings.parallel, settings.cpus)
    return math.ceil(len(modes) / at_once) * smoke.timeout_for(target, settings.timeout) / 60


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


def under(path: str, dirs: list[str]) -> bool:
    return any(Path(path).is_relative_to(os.path.normpath(d)) for d in dirs)


# --- legs: one matrix combination of a job, its isobuild commands parsed ------------------------


Combo = dict[str, str]


@dataclass
class Leg:
    job: str
    combo: Combo
    commands: list[argparse.Namespace]
    arch: str | None  # the arch its stage commands build or test (None: a job of no one arch)

    def __str__(self) -> str:
        return f"{self.job} {self.combo}" if self.combo else self.job

    def stages(self) -> set[tuple[str, str]]:
        return {s for args in self.commands if (s := stage_of(args))}


def product(entry: dict[str, Any]) -> list[Combo]:
    """Every combination of one matrix entry's values (a value that is no list is one value)."""
    lists = [[str(v) for v in (value if isinstance(value, list) else [value])] for value in entry.values()]
    return [dict(zip(entry, combo, strict=True)) for combo in itertools.product(*lists)]


def gh_combos(job: dict[str, Any]) -> list[Combo]:
    """A GitHub job's matrix combinations: the product of its dimensions, each include entry added
    to every combination whose original values it does not change (a new combination otherwise)."""
    matrix = dict(job.get("strategy", {}).get("matrix", {}))
    include = matrix.pop("include", [])
    assert "exclude" not in matrix, "a matrix with exclude: teach gh_combos about it"
    for dim, value in list(matrix.items()):
        if isinstance(value, str) and (m := GH_FROM_OUTPUT.fullmatch(value.strip())):
            # made from a job's output when the workflow runs: checked with samples of what it holds
            output = (m.group(1), m.group(2))
            assert output in OUTPUT_SAMPLES, f"matrix.{dim} is {value}: give OUTPUT_SAMPLES values for it"
            matrix[dim] = list(OUTPUT_SAMPLES[output])
    combos = product(matrix) if matrix else []
    for extra in include:
        extra = {k: str(v) for k, v in extra.items()}
        hits = [c for c in combos if all(c[k] == v for k, v in extra.items() if k in matrix)]
        for combo in hits:
            combo.update(extra)
        if not hits:
            combos.append(extra)
    return combos or [{}]


def gh_dimensions(job: dict[str, Any]) -> set[str]:
    return set(job.get("strategy", {}).get("matrix", {})) - {"include", "exclude"}


def gl_combos(job: dict[str, Any]) -> list[Combo]:
    parallel = job.get("parallel", {})
    if isinstance(parallel, int):  # parallel: N -- N copies, told apart by CI_NODE_INDEX (1..N) of CI_NODE_TOTAL
        return [{"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(parallel)} for i in range(1, parallel + 1)]
    return [c for entry in parallel.get("matrix", []) for c in product(entry)] or [{}]


def subst(text: str, combo: Combo) -> str:
    """``text`` with the leg's matrix values put in for ${{ matrix.x }} (GitHub) and $X / ${X} (GitLab)."""
    def value(m: re.Match[str]) -> str:
        assert m.group(1) in combo, f"{text!r}: matrix.{m.group(1)} is no matrix value of the job"
        return combo[m.group(1)]

    text = GH_MATRIX.sub(value, text)
    for key, v in combo.items():
        text = re.sub(r"\$\{?" + re.escape(key) + r"\}?(?!\w)", v, text)
    return text


def stage_of(args: argparse.Namespace) -> tuple[str, str] | None:
    """(kind, distro) of the stage an isobuild command builds or boot-checks; None for the others."""
    if args.verb in ("kernel", "glibc"):
        return args.verb, ""
    if args.verb == "test":
        return ("smoke", args.target) if args.target != "kernel" else ("kernel-boot", "")
    if args.verb in {"debian", *EL_DISTROS}:
        return "iso", args.verb
    if args.verb == "pkg" and args.pkg_action == "build":
        return "pkg", pkg_distro()
    return None


def invocations(text: str, where: str) -> list[str]:
    """What follows each .venv/bin/isobuild in a step's or job's shell text: every one of them."""
    found = INVOCATION.findall(text)
    assert len(found) == text.count(".venv/bin/isobuild"), f"{where}: an isobuild call INVOCATION does not see"
    return list(found)


def parse(lines: list[str], where: str) -> list[argparse.Namespace]:
    """Each line (what follows .venv/bin/isobuild, the leg's values put in) parsed by the real CLI."""
    out = []
    for text in lines:
        assert "matrix." not in text, f"{where}: 'isobuild {text}' keeps a matrix reference"
        try:
            out.append(cli.parser().parse_args(shlex.split(text)))
        except SystemExit:
            pytest.fail(f"{where}: 'isobuild {text}' does not parse with isobuild's CLI")
    return out


def leg(project: Project, job: str, combo: Combo, lines: list[str], where: str) -> Leg:
    commands = parse([subst(line.strip(), combo) for line in lines], where)
    arches = {args.arch or project.settings.arch for args in commands if stage_of(args)}
    assert len(arches) <= 1, f"{where}: one leg builds for several arches {sorted(arches)}"
    return Leg(job, combo, commands, next(iter(arches), None))


def check_arch(project: Project, args: argparse.Namespace, where: str) -> None:
    """The command's --arch is a known arch, and one its stage is configured to build."""
    given = getattr(args, "arch", None)
    assert given is None or given in ARCHES, f"{where}: --arch {given} is no arch isobuild knows"
    stage = stage_of(args)
    if stage is None:
        return
    kind, distro = stage
    arch = given or project.settings.arch
    if kind in ("kernel", "kernel-boot"):
        try:
            kconfig.load_profile(project.root, args.profile or project.settings.kernel.profile,
                                 project.settings.kernel.fragments, arch)
        except IsobuildError as exc:
            pytest.fail(f"{where}: {exc.message}")
    elif kind == "glibc":
        assert Graph(project, None, arch).glibc_distro() is not None, \
            f"{where}: glibc for {arch}, which no Debian-family distro lists in its 'arches'"
    else:
        listed = distros.load(project, distro).arches()
        assert arch in listed, f"{where}: {distro} for {arch}; distros/{distro}.yaml lists {listed}"


def expected_stages(project: Project) -> set[tuple[str, str, str]]:
    """(kind, distro, arch) of every leg the pipelines must have: for every arch each distro lists,
    its kernel, the Debian family's glibc, the ISO and its boot checks; and the package builds."""
    out: set[tuple[str, str, str]] = set()
    for name in distros.names(project):
        plugin = distros.load(project, name)
        for arch in plugin.arches():
            out |= {("kernel", "", arch), ("iso", name, arch), ("smoke", name, arch)}
            if plugin.glibc_format == "deb":
                out.add(("glibc", "", arch))
    # the package list is built for the runner's own arch (KVM when it has it), in the Debian image
    assert RUNNER_ARCH in distros.load(project, pkg_distro()).arches()
    out.add(("pkg", pkg_distro(), RUNNER_ARCH))
    return out


def check_legs(project: Project, legs: list[Leg], where: str) -> None:
    """Every verb is one of the expected, every --arch fits, every distro arch has its legs and
    nothing more; a job's legs are one kind of stage, each leg one stage, and a leg with an arch
    dimension builds the arch it names."""
    used = {args.verb for lg in legs for args in lg.commands}
    assert used == VERBS, where
    built: set[tuple[str, str, str]] = set()
    for lg in legs:
        for args in lg.commands:
            check_arch(project, args, f"{where} job {lg}")
        if lg.job == "rebuild-check":  # builds a distro's ISO, then rebuilds that one from nothing to compare
            verbs = [(a.verb, getattr(a, "distro", None) or a.verb, a.arch) for a in lg.commands]
            assert [v for v, _, _ in verbs] == ["debian", "rebuild-check"], f"{where} job {lg}: {verbs}"
            assert verbs[0][1:] == verbs[1][1:], f"{where} job {lg} checks another distro or arch than it built"
            continue
        stages = lg.stages()
        assert len(stages) <= 1, f"{where} job {lg} runs several stages {stages}"
        for kind, distro in stages:
            assert lg.job.split("-")[0] == kind, f"{where} job {lg} runs a {kind} stage"
            assert lg.arch is not None
            built.add((kind, distro, lg.arch))
        for key in ("arch", "ARCH"):
            if key in lg.combo:
                assert lg.arch == lg.combo[key], f"{where} job {lg} builds for {lg.arch}"
    missing, extra = expected_stages(project) - built, built - expected_stages(project)
    assert not missing, f"{where}: no job for {sorted(missing)} (kind, distro, arch)"
    assert not extra, f"{where}: jobs for {sorted(extra)}, which no distro lists"


def check_iso_outputs(project: Project, legs: list[Leg], kept: dict[str, list[str]], where: str) -> None:
    """An ISO leg hands on its arch's ISO, its .sha256 and its manifest (builder.stages.iso's names)."""
    for lg in legs:
        for kind, distro in lg.stages():
            if kind == "iso":
                stage = pipeline.iso_stage(project, distro, None, lg.arch)
                for path in (stage.out, stage.sha_path, stage.manifest_path):
                    assert under(rel(project, path), kept[str(lg)]), f"{where} job {lg} does not keep {path}"


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


def test_the_arch_checks_do_catch_mistakes(project: Project) -> None:
    """The --arch checks are live: an arch isobuild does not know does not parse, and one a stage
    is not configured for is refused."""
    with pytest.raises(pytest.fail.Exception):
        parse(["kernel --arch sparc64"], "test")
    alma = next(a for a in ARCHES if a not in distros.load(project, "alma").arches())
    with pytest.raises(AssertionError):
        check_arch(project, cli.parser().parse_args(["alma", "--arch", alma]), "test")
    with pytest.raises(AssertionError, match="no job for"):
        check_legs(project, [lg for lg in gh_legs(project) if lg.arch != "riscv64"], "test")


# --- GitHub Actions: structure ------------------------------------------------------------------


def gh_jobs() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(GITHUB.read_text())["jobs"])


def gh_needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def upstream(jobs: dict[str, dict[str, Any]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(gh_needs(jobs[name]))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += gh_needs(jobs[n])
    return seen


def gh_env() -> dict[str, str]:
    return {k: str(v) for k, v in yaml.safe_load(GITHUB.read_text()).get("env", {}).items()}


def gh_legs(project: Project) -> list[Leg]:
    out = []
    for name, job in gh_jobs().items():
        runs = [str(s.get("run", "")) for s in job["steps"]]
        lines = [line for run in runs for line in invocations(run, f"{GITHUB.name} job {name}")]
        out += [leg(project, name, combo, lines, f"{GITHUB.name} job {name} {combo}") for combo in gh_combos(job)]
    return out


def gh_steps(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]


def run_shell(script: str, cwd: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run(["bash", *options, "-c", script], cwd=cwd, env={**base, **env}, capture_output=True,
                          text=True, timeout=120)


def gh_step_outputs(job: dict[str, Any], combo: Combo) -> dict[str, dict[str, str]]:
    """What the job's own shell steps with an id write to $GITHUB_OUTPUT in this leg, by running
    them as GitHub does (bash -e, the leg's values put in); a step that runs isobuild is left out."""
    out: dict[str, dict[str, str]] = {}
    for step in job["steps"]:
        if "id" not in step or "run" not in step or ".venv/bin/isobuild" in str(step["run"]):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "github_output"
            env = {**gh_env(), **{k: subst(str(v), combo) for k, v in step.get("env", {}).items()},
                   "GITHUB_OUTPUT": str(output)}
            done = run_shell(subst(str(step["run"]), combo), Path(tmp), env, "-e")
            assert done.returncode == 0, f"step {step['id']} {combo}: {done.stderr}"
            lines = output.read_text().splitlines() if output.exists() else []
            out[step["id"]] = {k: v for k, _, v in (line.partition("=") for line in lines)}
    return out


def gh_step_subst(text: str, outputs: dict[str, dict[str, str]]) -> str:
    """``text`` with the step outputs (${{ steps.x.outputs.y }}) put in."""
    def value(m: re.Match[str]) -> str:
        step, key = m.groups()
        assert key in outputs.get(step, {}), f"{text!r}: no step {step} of the job writes the output {key}"
        return outputs[step][key]

    return GH_STEP_OUTPUT.sub(value, text)


@dataclass
class Upload:
    leg: Leg
    paths: list[str]


def gh_uploads(project: Project) -> dict[str, Upload]:
    """artifact name -> the leg that uploads it and its paths, the leg's values put in."""
    jobs = gh_jobs()
    out: dict[str, Upload] = {}
    for lg in gh_legs(project):
        for step in gh_steps(jobs[lg.job], "actions/upload-artifact"):
            artifact = subst(str(step["with"]["name"]), lg.combo)
            if GH_STEP_OUTPUT.search(artifact):
                artifact = gh_step_subst(artifact, gh_step_outputs(jobs[lg.job], lg.combo))
            assert not set(artifact) & ARTIFACT_NAME_FORBIDDEN, f"{lg}: {artifact!r} is no artifact name"
            assert artifact not in out, f"artifact {artifact} uploaded twice"
            paths = [p for p in str(step["with"]["path"]).splitlines() if p.strip()]
            out[artifact] = Upload(lg, [subst(p, lg.combo) for p in paths])
    return out


def gh_minutes(job: dict[str, Any], combo: Combo) -> int:
    return int(subst(str(job["timeout-minutes"]), combo))


def test_github_jobs_are_the_stages_and_need_only_existing_jobs() -> None:
    jobs = gh_jobs()
    assert set(jobs) == GH_JOBS
    for name, job in jobs.items():
        for need in gh_needs(job):
            assert need in jobs, f"{name} needs unknown job {need}"
        assert name not in upstream(jobs, name), f"{name} needs itself (a cycle)"
        for ref in re.findall(r"needs\.([\w-]+)\.result", str(job.get("if", ""))):
            assert ref in gh_needs(job), f"{name}: its if: reads needs.{ref} but does not need it"
        for ref, output in re.findall(r"needs\.([\w-]+)\.outputs\.([\w-]+)", yaml.safe_dump(job)):
            assert ref in gh_needs(job), f"{name} reads needs.{ref}.outputs.{output} but does not need {ref}"
            assert output in jobs[ref].get("outputs", {}), f"{name} reads {ref}'s output {output}, which it lacks"
        ids = {str(s["id"]) for s in job["steps"] if "id" in s}
        for output, value in job.get("outputs", {}).items():
            refs = GH_STEP_OUTPUT.findall(str(value))
            assert refs and all(step in ids for step, _ in refs), f"{name}: output {output} is no step's output"


def test_github_every_isobuild_job_bootstraps_first_and_its_commands_parse() -> None:
    for name, job in gh_jobs().items():
        runs = [str(s.get("run", "")) for s in job["steps"]]
        first = next(i for i, r in enumerate(runs) if ".venv/bin/isobuild" in r)
        assert "./scripts/bootstrap.sh" in runs[:first], f"{name} runs isobuild before scripts/bootstrap.sh"


def test_github_legs_cover_every_distro_arch_with_known_arches(project: Project) -> None:
    legs = gh_legs(project)
    check_legs(project, legs, GITHUB.name)
    uploads = gh_uploads(project)
    for artifact, up in uploads.items():
        if "arch" in up.leg.combo:  # one artifact per job and arch: kernel-arm64
            assert artifact == f"{up.leg.job}-{up.leg.arch}", artifact
    kept: dict[str, list[str]] = {str(lg): [] for lg in legs} | {str(up.leg): up.paths for up in uploads.values()}
    check_iso_outputs(project, legs, kept, GITHUB.name)


def test_github_artifacts_are_isobuild_paths_and_downloads_find_them(project: Project) -> None:
    jobs = gh_jobs()
    uploads = gh_uploads(project)
    allowed = layout(project)
    for artifact, up in uploads.items():
        for path in up.paths:
            assert known(path, allowed), f"{up.leg} uploads {path} as {artifact}: not a path isobuild writes"
    fetched: dict[str, set[str]] = {}
    for lg in gh_legs(project):
        for step in gh_steps(jobs[lg.job], "actions/download-artifact"):
            with_ = step["with"]
            want = subst(str(with_.get("name") or with_["pattern"]), lg.combo)
            found = [a for a in uploads if fnmatch.fnmatchcase(a, want)]
            assert found, f"{lg} downloads {want}, which no job uploads"
            fetched.setdefault(lg.job, set()).update(found)
            for artifact in found:
                up = uploads[artifact]
                assert up.leg.job in upstream(jobs, lg.job), f"{lg} downloads {artifact} without needing {up.leg.job}"
                # upload-artifact roots an artifact at its paths' common ancestor: it lands right only there
                assert os.path.normpath(str(with_["path"])) == lca(up.paths), (str(lg), artifact)
                if "name" in with_ and lg.arch is not None:
                    assert up.leg.arch == lg.arch, f"{lg} ({lg.arch}) downloads {artifact}, {up.leg.arch}'s"
                if "pattern" in with_:
                    assert with_.get("merge-multiple") is True, f"{lg}: a pattern download must merge"
    # the release signs every leg's ISO, the report shows every leg's pieces (of the stages: the
    # report knows no package builds)
    assert fetched["release"] == {a for a, up in uploads.items() if up.leg.job.startswith("iso-")}
    assert fetched["report"] == {a for a, up in uploads.items() if up.leg.job in STAGES - {"release", "report"}}
    assert "pkg" not in inspect.getsource(report), "isobuild report shows package builds: the report job fetches them"


def test_github_caches_junit_and_report_paths(project: Project, tmp_path: Path) -> None:
    jobs = gh_jobs()
    assert yaml.safe_load(GITHUB.read_text())["env"]["ISOBUILD_WORK_DIR"] == ".work"
    cached: set[str] = set()
    for name, job in jobs.items():
        for step in gh_steps(job, "actions/cache"):
            paths = [p for p in str(step["with"]["path"]).splitlines() if p.strip()]
            cached.add(name)
            assert {os.path.normpath(p) for p in paths} <= caches(project), name
            if paths != [rel(project, project.work_dir / "sources")]:  # the sources are every arch's
                for dim in gh_dimensions(job):  # else one entry per leg: legs do not overwrite each other's
                    assert f"matrix.{dim}" in step["with"]["key"], f"{name}: its cache key lacks matrix.{dim}"
            skipped = re.findall(r"matrix\.arch != '([\w-]+)'", str(step.get("if", "")))
            assert skipped in ([], [RUNNER_ARCH]), f"{name}: a cache only a native build would skip"
    assert {p for j in jobs.values() for s in gh_steps(j, "actions/cache")
            for p in str(s["with"]["path"]).splitlines() if p.strip()} == caches(project)
    assert cached == {"kernel", "glibc", "iso-debian", "iso-el"}
    # a restore-only cache reads what a saving one writes: the same path (part of the cache's
    # version), key and restore-keys as a leg of its own arch saves with
    def cache_id(step: dict[str, Any], combo: Combo) -> tuple[str, ...]:
        return tuple(subst(str(step["with"].get(k, "")), combo) for k in ("path", "key", "restore-keys"))

    legs = gh_legs(project)
    savers = {cache_id(step, lg.combo): lg for lg in legs for step in gh_steps(jobs[lg.job], "actions/cache")}
    restored: set[str] = set()
    for lg in legs:
        for step in gh_steps(jobs[lg.job], "actions/cache/restore"):
            restored.add(lg.job)
            restoring = {os.path.normpath(p) for p in str(step["with"]["path"]).splitlines() if p.strip()}
            assert restoring <= caches(project), lg.job
            saver = savers.get(cache_id(step, lg.combo))
            assert saver is not None, f"{lg} restores a cache no job saves (path, key, restore-keys: the saver's)"
            assert saver.arch == lg.arch, f"{lg} ({lg.arch}) restores {saver}'s cache"
    assert restored == {"pkg-build"}
    junit_jobs: set[str] = set()
    for lg in gh_legs(project):
        for step in gh_steps(jobs[lg.job], "mikepenz/action-junit-report"):
            junit_jobs.add(lg.job)
            [(kind, distro)] = lg.stages()
            assert kind in ("smoke", "pkg") and lg.arch is not None
            want = junit_name(tmp_path, distro, lg.arch) if kind == "smoke" else pkg_results(tmp_path, lg.arch)[1]
            assert subst(step["with"]["report_paths"], lg.combo) == "logs/" + want
    assert junit_jobs == {"smoke-debian", "smoke-el", "pkg-build"}
    out = report.default_path(project).relative_to(project.root).as_posix()
    assert any(f"isobuild report --out {out}" in str(s.get("run", "")) for s in jobs["report"]["steps"])
    report_upload = gh_uploads(project)["report"]
    assert (report_upload.leg.job, report_upload.paths) == ("report", [out])


def test_github_timeouts_fit_each_arch(project: Project) -> None:
    """A boot-check leg outlasts isobuild's own boot timeouts (a hung boot ends as a verdict, not
    a killed job), a package build leg its build VM's, and a leg that runs its arch's programs
    emulated gets no less time than one of an arch that runs faster."""
    jobs = gh_jobs()
    by_job: dict[str, list[Leg]] = {}
    for lg in gh_legs(project):
        minutes = gh_minutes(jobs[lg.job], lg.combo)
        assert minutes > 0, str(lg)
        by_job.setdefault(lg.job, []).append(lg)
        if any(kind == "smoke" for kind, _ in lg.stages()):
            assert lg.arch is not None
            need = boot_minutes(project, lg.arch) + BOOTSTRAP_MINUTES
            assert minutes >= need, f"{lg}: {minutes} minutes, its boots may take {need:.0f}"
        if any(kind == "pkg" for kind, _ in lg.stages()):  # one package per leg
            assert lg.arch is not None
            need = build_minutes(project, lg.arch) + PKG_SETUP_MINUTES
            assert minutes >= need, f"{lg}: {minutes} minutes, its package build may take {need:.0f}"
    for name, legs in by_job.items():
        if any(kind in ("iso", "smoke") for lg in legs for kind, _ in lg.stages()):
            ordered = sorted(legs, key=lambda lg: ARCHES[lg.arch or RUNNER_ARCH].tcg_slowdown)
            times = [gh_minutes(jobs[name], lg.combo) for lg in ordered]
            assert times == sorted(times), f"{name}: a slower arch gets less time ({times})"


def test_github_el_jobs_are_gated_and_name_real_distros(project: Project) -> None:
    jobs = gh_jobs()
    for name in ("iso-el", "smoke-el"):
        assert jobs[name]["if"] == "${{ vars.ISOBUILD_EL == 'true' }}"
        assert {c["distro"] for c in gh_combos(jobs[name])} == EL_DISTROS <= set(distros.names(project))
    assert "needs.smoke-el.result == 'skipped'" in jobs["release"]["if"], "a skipped EL job does not block a release"


# --- GitLab CI: structure -----------------------------------------------------------------------


def gl_jobs() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(GITLAB.read_text())
    reserved = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache",
                "before_script", "after_script"}
    return {k: v for k, v in data.items() if k not in reserved and not k.startswith(".")}


def gl_needs(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"job": n} if isinstance(n, str) else dict(n) for n in job.get("needs", [])]


def gl_variables() -> dict[str, str]:
    return {k: str(v) for k, v in yaml.safe_load(GITLAB.read_text()).get("variables", {}).items()}


def gl_legs(project: Project) -> list[Leg]:
    out = []
    for name, job in gl_jobs().items():
        lines = [args for line in job["script"] for args in invocations(line, f"{GITLAB.name} job {name}")]
        out += [leg(project, name, combo, lines, f"{GITLAB.name} job {name} {combo}") for combo in gl_combos(job)]
    return out


def gl_picked(legs: list[Leg], need: dict[str, Any], lg: Leg) -> list[Leg]:
    """The legs of the needed job that ``need`` picks for leg ``lg``: those its needs:parallel:matrix
    names (matrix expressions, $[[ matrix.X ]], take lg's values), every leg without one."""
    if "parallel" not in need:
        return legs
    wanted: list[Combo] = []
    for entry in need["parallel"]["matrix"]:
        for combo in product(entry):
            for key, value in combo.items():
                for ref in GL_MATRIX.findall(value):
                    assert ref in lg.combo, f"{lg}: $[[ matrix.{ref} ]] is no matrix value of the job"
                combo[key] = GL_MATRIX.sub(lambda m: lg.combo[m.group(1)], value)
            wanted.append(combo)
    return [up for up in legs if any(all(up.combo.get(k) == v for k, v in w.items()) for w in wanted)]


def gl_cache_id(cache: dict[str, Any], combo: Combo) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """What names a GitLab cache's content for a leg: its key (or key prefix and files) and its paths."""
    key = cache["key"]
    prefix, files = (key.get("prefix", ""), key.get("files", [])) if isinstance(key, dict) else (key, [])
    return (subst(str(prefix), combo), tuple(sorted(str(f) for f in files)),
            tuple(sorted(os.path.normpath(p) for p in cache["paths"])))


def gl_minutes(text: str) -> int:
    parts = re.findall(r"(\d+)\s*([hm])", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), f"timeout {text!r}"
    return sum(int(n) * (60 if u == "h" else 1) for n, u in parts)


def test_gitlab_jobs_are_the_stages_and_need_only_existing_earlier_jobs() -> None:
    data = yaml.safe_load(GITLAB.read_text())
    jobs = gl_jobs()
    assert set(jobs) == GL_JOBS and GL_JOBS & set(gh_jobs()) == GL_JOBS, "the same stages as jobs on both platforms"
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


def test_gitlab_legs_cover_every_distro_arch_and_need_their_own_arch(project: Project) -> None:
    jobs = gl_jobs()
    legs = gl_legs(project)
    check_legs(project, legs, GITLAB.name)
    kept = {str(lg): [subst(p, lg.combo) for p in jobs[lg.job].get("artifacts", {}).get("paths", [])] for lg in legs}
    check_iso_outputs(project, legs, kept, GITLAB.name)
    by_job: dict[str, list[Leg]] = {}
    for lg in legs:
        by_job.setdefault(lg.job, []).append(lg)
    for lg in legs:
        for need in gl_needs(jobs[lg.job]):
            picked = gl_picked(by_job[need["job"]], need, lg)
            assert picked, f"{lg} needs {need}, which picks no leg of {need['job']}"
            if lg.arch is not None:
                for up in picked:
                    assert up.arch == lg.arch, f"{lg} ({lg.arch}) needs {up}, {up.arch}'s"
    for name in ("release", "report"):  # every leg's ISOs to sign, every leg's pieces to show
        assert all("parallel" not in need for need in gl_needs(jobs[name])), name


def test_gitlab_commands_parse_and_artifacts_caches_junit_are_isobuild_paths(project: Project,
                                                                              tmp_path: Path) -> None:
    jobs = gl_jobs()
    allowed = layout(project)
    legs = gl_legs(project)
    for lg in legs:
        job = jobs[lg.job]
        for path in job.get("artifacts", {}).get("paths", []):
            concrete = subst(path, lg.combo)
            assert known(concrete, allowed), f"{lg} keeps {concrete}: not a path isobuild writes"
        for cache in job.get("cache", []):
            paths = [os.path.normpath(p) for p in cache["paths"]]
            assert set(paths) <= caches(project), lg.job
            key = cache["key"]["prefix"] if isinstance(cache["key"], dict) else cache["key"]
            if cache.get("policy") == "pull":  # reads a cache another job's leg of its arch saves
                savers = [up for up in legs for c in jobs[up.job].get("cache", [])
                          if c.get("policy") != "pull" and gl_cache_id(c, up.combo) == gl_cache_id(cache, lg.combo)]
                assert savers, f"{lg} pulls a cache no job saves (its key, files and paths must be the saver's)"
                assert all(up.arch == lg.arch for up in savers), f"{lg} ({lg.arch}) pulls {savers[0]}'s cache"
            elif paths != [rel(project, project.work_dir / "sources")]:  # the sources are every arch's
                for dim in lg.combo:
                    assert f"${dim}" in key, f"{lg.job}: its cache key lacks ${dim}"
        junit = job.get("artifacts", {}).get("reports", {}).get("junit")
        if junit is not None:
            [(kind, distro)] = lg.stages()
            assert kind in ("smoke", "pkg") and lg.arch is not None
            want = junit_name(tmp_path, distro, lg.arch) if kind == "smoke" else pkg_results(tmp_path, lg.arch)[1]
            assert fnmatch.fnmatchcase("logs/" + want, subst(junit, lg.combo)), f"{lg}: {junit} misses its results"
    cached = {os.path.normpath(p) for j in jobs.values() for c in j.get("cache", []) for p in c["paths"]}
    assert cached == caches(project)
    assert {n for n, j in jobs.items() if "junit" in j.get("artifacts", {}).get("reports", {})} == \
        {"smoke-debian", "smoke-el", "pkg-build"}
    out = report.default_path(project).relative_to(project.root).as_posix()
    assert f".venv/bin/isobuild report --out {out}" in jobs["report"]["script"]
    assert jobs["report"]["artifacts"]["paths"] == [out]
    for name in ("iso-el", "smoke-el"):
        assert jobs[name]["rules"] == [{"if": '$ISOBUILD_EL == "true"'}]
        assert {c["DISTRO"] for c in gl_combos(jobs[name])} == EL_DISTROS <= set(distros.names(project))


def test_gitlab_junit_globs_find_their_own_legs_results_alone(project: Project) -> None:
    """A JUnit glob (smoke-debian*.xml) is exact only because nothing a smoke leg downloads ran a
    boot check: upstream of it, no smoke command and no ISO built without --no-smoke."""
    jobs = gl_jobs()
    legs = gl_legs(project)
    for job in jobs.values():
        junit = str(job.get("artifacts", {}).get("reports", {}).get("junit", ""))
        if not any(c in junit for c in "*?["):
            continue
        todo, seen = [n["job"] for n in gl_needs(job) if n.get("artifacts", True)], set()
        while todo:
            up = todo.pop()
            if up not in seen:
                seen.add(up)
                todo += [n["job"] for n in gl_needs(jobs[up]) if n.get("artifacts", True)]
        for lg in legs:
            if lg.job in seen:
                for args in lg.commands:
                    kind = (stage_of(args) or ("", ""))[0]
                    assert kind != "smoke", f"{lg} boot-checks upstream of a JUnit glob"
                    assert kind != "iso" or args.no_smoke, f"{lg} boot-checks upstream of a JUnit glob"


def test_gitlab_timeouts_are_the_slowest_legs(project: Project) -> None:
    """GitLab's timeout takes no variable: a matrix job's is the most any of its GitHub legs gets
    (a package shard's no less than a GitHub leg's of one package: it holds several), a boot-check
    job outlasts isobuild's own boot timeouts on every arch and a package shard one build VM's."""
    gh = gh_jobs()
    for name, job in gl_jobs().items():
        minutes = gl_minutes(str(job["timeout"]))
        most = max(gh_minutes(gh[name], c) for c in gh_combos(gh[name]))
        if isinstance(job.get("parallel"), int):
            assert minutes >= most, name
        else:
            assert minutes == most, name
    for lg in gl_legs(project):
        minutes = gl_minutes(str(gl_jobs()[lg.job]["timeout"]))
        if any(kind == "smoke" for kind, _ in lg.stages()):
            assert lg.arch is not None
            need = boot_minutes(project, lg.arch) + BOOTSTRAP_MINUTES
            assert minutes >= need, str(lg)
        if any(kind == "pkg" for kind, _ in lg.stages()):
            assert lg.arch is not None
            need = build_minutes(project, lg.arch) + PKG_SETUP_MINUTES
            assert minutes >= need, str(lg)


# --- package builds -----------------------------------------------------------------------------


def fake_isobuild(root: Path, builds: Path) -> None:
    """<root>/.venv/bin/isobuild as the pipelines call it: the real CLI, except that 'pkg build' is
    only noted in ``builds`` (its arguments, a line per call) instead of starting build VMs."""
    real = Path(sys.executable).with_name("isobuild")
    if not real.exists():
        pytest.fail(f"{real} is missing: pip install -e '.[dev]'")
    exe = root / ".venv" / "bin" / "isobuild"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\n"
                   f'if [ "$1 $2" = "pkg build" ]; then echo "$*" >> {shlex.quote(str(builds))}; exit 0; fi\n'
                   f'exec {shlex.quote(str(real))} "$@"\n')
    exe.chmod(0o755)


def noted(builds: Path) -> list[str]:
    lines = builds.read_text().splitlines() if builds.exists() else []
    builds.unlink(missing_ok=True)
    return lines


def test_github_package_legs_are_the_list_jobs_output(project: Project, fake_project: Any, tmp_path: Path) -> None:
    """pkg-build's matrix is pkg-matrix's output, which is isobuild pkg list --json (run here: the
    list as a JSON array, the very '[]' pkg-build's if: skips on when it lists none), and each leg
    builds its one entry with pkg build, its artifact named after the entry's source package."""
    jobs = gh_jobs()
    build, lister = jobs["pkg-build"], jobs["pkg-matrix"]
    strategy = build["strategy"]
    assert strategy["fail-fast"] is False and set(strategy["matrix"]) == {"package"}
    source = GH_FROM_OUTPUT.fullmatch(str(strategy["matrix"]["package"]).strip())
    assert source is not None and source.groups() == ("pkg-matrix", "packages")
    skip = re.fullmatch(r"\$\{\{\s*needs\.pkg-matrix\.outputs\.packages\s*!=\s*'(.*)'\s*\}\}", str(build["if"]))
    assert skip is not None, f"pkg-build runs even when the list is empty: if: {build.get('if')}"
    assert "pkg-matrix" in gh_needs(build)
    ref = GH_STEP_OUTPUT.fullmatch(str(lister["outputs"]["packages"]).strip())
    assert ref is not None and ref.group(2) == "packages"
    [step] = [s for s in lister["steps"] if s.get("id") == ref.group(1)]
    [args] = parse(invocations(str(step["run"]), "pkg-matrix"), "pkg-matrix")
    assert (args.verb, args.pkg_action, args.json, args.shard) == ("pkg", "list", True, None)

    # the step as GitHub runs it, in a project: first with no list, then with one of every kind of entry
    builds = tmp_path / "builds"
    fake_isobuild(fake_project.root, builds)
    out = tmp_path / "github_output"

    def output() -> str:
        out.write_text("")
        done = run_shell(str(step["run"]), fake_project.root, {**gh_env(), "GITHUB_OUTPUT": str(out)}, "-e")
        assert done.returncode == 0, done.stdout + done.stderr
        [line] = out.read_text().splitlines()
        key, _, value = line.partition("=")
        assert key == "packages", line
        return value

    assert output() == skip.group(1) == "[]"
    listed = pkg.list_path(load_project(fake_project.root / "isobuild.yaml"))
    listed.write_text("# the samples\n" + "".join(f"{e}  # {i}\n" for i, e in enumerate(SAMPLE_PACKAGES)))
    assert json.loads(output()) == list(SAMPLE_PACKAGES)
    assert noted(builds) == []

    # one leg per entry, building that entry alone, for the runner's arch; one artifact each
    legs = [lg for lg in gh_legs(project) if lg.job == "pkg-build"]
    assert [lg.combo["package"] for lg in legs] == list(SAMPLE_PACKAGES)
    for lg in legs:
        [args] = lg.commands
        assert (args.verb, args.pkg_action, args.names, args.shard) == ("pkg", "build", [lg.combo["package"]], None)
        assert lg.arch == RUNNER_ARCH
    artifacts = {up.leg.combo["package"]: name for name, up in gh_uploads(project).items() if up.leg.job == "pkg-build"}
    assert artifacts == {e: f"pkg-{pkglist.parse_entry(e, 'test').name}" for e in SAMPLE_PACKAGES}


def test_gitlab_package_shards_are_the_node_index_and_an_empty_one_succeeds(project: Project, fake_project: Any,
                                                                           tmp_path: Path) -> None:
    """pkg-build runs as parallel: N copies, copy I building --shard I/N (CI_NODE_INDEX/CI_NODE_TOTAL);
    its script, run here with only 'pkg build' stubbed, builds its shard when the list leaves it any
    package and otherwise succeeds without calling pkg build (which refuses an empty list)."""
    job = gl_jobs()["pkg-build"]
    total = job["parallel"]
    assert isinstance(total, int) and total >= 2
    legs = [lg for lg in gl_legs(project) if lg.job == "pkg-build"]
    assert [lg.combo for lg in legs] == [{"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(total)}
                                         for i in range(1, total + 1)]
    for index, lg in enumerate(legs, 1):
        shard = f"{index}/{total}"
        assert [(a.verb, a.pkg_action, a.shard) for a in lg.commands] == [("pkg", "list", shard),
                                                                          ("pkg", "build", shard)]
        assert lg.commands[0].json and lg.commands[1].names == [] and lg.arch == RUNNER_ARCH

    builds = tmp_path / "builds"
    fake_isobuild(fake_project.root, builds)

    def shard_builds(index: int) -> list[str]:
        env = {**gl_variables(), "CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": str(total)}
        done = run_shell("\n".join(job["script"]), fake_project.root, env, "-eo", "pipefail")  # as the runner does
        assert done.returncode == 0, f"shard {index}/{total}: {done.stdout}{done.stderr}"
        return noted(builds)

    assert all(shard_builds(i) == [] for i in range(1, total + 1))  # no list at all
    assert fake_project.run("pkg", "build", "--shard", f"{total}/{total}") == ExitCode.USER  # why the script asks first
    listed = pkg.list_path(load_project(fake_project.root / "isobuild.yaml"))
    listed.write_text("".join(f"tool{i}\n" for i in range(total - 1)))  # fewer packages than shards: the last is empty
    for index in range(1, total + 1):
        assert shard_builds(index) == ([f"pkg build --shard {index}/{total}"] if index < total else []), index


def test_package_artifacts_are_where_pkg_build_writes(project: Project, tmp_path: Path) -> None:
    """Every package build leg keeps <work>/pkgs/<arch>/ of its arch, which holds a build's directory
    as pkg.plan names it, and the logs dir with pkg build's pkg-<arch>.json and .xml in it."""
    tree = tmp_path / "mytool"  # a local source tree: planned without any mirror
    (tree / "debian").mkdir(parents=True)
    (tree / "debian" / "changelog").write_text("mytool (1:1.0-1) unstable; urgency=medium\n\n  * t\n\n"
                                               " -- T <t@example.org>  Thu, 01 Jan 1970 00:00:00 +0000\n")
    (tree / "debian" / "control").write_text("Source: mytool\n")
    suite: Any = None  # only a name from the mirror needs the suite
    jobs = gl_jobs()
    kept = [(str(up.leg), up.leg.arch, up.paths) for up in gh_uploads(project).values() if up.leg.job == "pkg-build"]
    kept += [(str(lg), lg.arch, [subst(p, lg.combo) for p in jobs[lg.job]["artifacts"]["paths"]])
             for lg in gl_legs(project) if lg.job == "pkg-build"]
    assert len(kept) == len(SAMPLE_PACKAGES) + jobs["pkg-build"]["parallel"]
    for where, arch, paths in kept:
        assert arch is not None
        plan = pkg.plan(project, suite, [], arch, "IMAGE-KEY", [pkglist.parse_entry(str(tree), "test")], False, True)
        [built] = plan.jobs
        assert built.out.is_relative_to(pkg.pkgs_dir(project) / arch)
        assert {os.path.normpath(p) for p in paths} >= {rel(project, pkg.pkgs_dir(project) / arch)}, where
        assert under(rel(project, built.out), paths), f"{where} does not keep {built.out}"
        for name in pkg_results(tmp_path, arch):
            assert under(rel(project, project.logs_dir / name), paths), f"{where} does not keep logs/{name}"


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


def test_the_kernel_and_glibc_jobs_pull_an_unchanged_stage_from_the_store(project: Project) -> None:
    """Both pipelines set the store (pushing into it); each stored stage's job keeps the store's entries of
    that stage in the CI cache under its arch and stage key (GitHub: the key isobuild cache key prints
    for the leg's arch, so a changed kernel is a new entry; GitLab: per arch and branch, pruned to the
    current key after the build) -- and the job then runs the stage's verb, which pulls it."""
    gh = yaml.safe_load(GITHUB.read_text())
    gl = yaml.safe_load(GITLAB.read_text())
    for where, env in (("github", gh["env"]), ("gitlab", gl["variables"])):
        assert env["ISOBUILD_CACHE_STORE"] == STORE and env["ISOBUILD_CACHE_PUSH"] == "1", where
        assert os.path.normpath(env["ISOBUILD_CACHE_STORE"]) != env["ISOBUILD_WORK_DIR"]
    assert f"{STORE}/" in (REPO / ".gitignore").read_text().splitlines()
    for kind, job in STORED_STAGES.items():
        steps = gh["jobs"][job]["steps"]
        (cache_step,) = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache")
                         and s["with"]["path"] == f"{STORE}/{kind}"]
        ref = GH_STEP_OUTPUT.search(cache_step["with"]["key"])
        assert ref and "${{ matrix.arch }}" in cache_step["with"]["key"], cache_step
        (key_step,) = [s for s in steps if s.get("id") == ref.group(1)]
        assert f"isobuild cache key {kind} --arch ${{{{ matrix.arch }}}})" in key_step["run"]
        assert f'{ref.group(2)}=$(' in key_step["run"] and "$GITHUB_OUTPUT" in key_step["run"]
        runs = [str(s.get("run", "")) for s in steps]
        assert steps.index(key_step) < steps.index(cache_step) < \
            next(i for i, r in enumerate(runs) if f"isobuild {job} --arch" in r), f"{job}: key, cache, then the build"
        (store,) = [c for c in gl[job]["cache"] if c["paths"] == [f"{STORE}/{kind}/"]]
        assert "$ARCH" in store["key"] and "$CI_COMMIT_REF_SLUG" in store["key"], store
        assert store.get("policy", "pull-push") == "pull-push"
        assert store["fallback_keys"] == [store["key"].replace("$CI_COMMIT_REF_SLUG", "$CI_DEFAULT_BRANCH")]
        script = gl[job]["script"]
        assert script.index(".venv/bin/isobuild cache prune") > \
            next(i for i, line in enumerate(script) if line.startswith(f'.venv/bin/isobuild {job} --arch "$ARCH"'))
