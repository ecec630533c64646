"""The ``isobuild`` command line: a table of verbs (``VERBS``), their handlers, and ``main``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from builder import __version__, distros, pipeline
from builder.commands import cache, clean, doctor, patches, pkg, rebuild, release, report, status, vm
from builder.commands import lock as lockcmd
from builder.distros.graph import DistroStages, Graph
from builder.infra import arch as arch_mod
from builder.infra import atomic, lock, log
from builder.infra.config import GlibcSettings, Project, check_profile_name, load_project
from builder.infra.errors import CheckFailed, ExitCode, InfraError, IsobuildError, UserError
from builder.stages import glibc, guesttests, kernelboot, smoke
from builder.stages.image import key_dir
from builder.stages.kernel import KernelStage
from builder.stages.kpackage import Kind, parse_kinds
from builder.tools import aptproxy, console, distcc, pkglist, ssh
from builder.tools import vm as vmtool
from builder.tools.console import Verdict, raise_for

EXIT_CODES = """exit codes:
  0    success (or: already up to date)
  1    internal error in isobuild (a bug: please report the traceback)
  2    user error: bad config, bad patch or series, dropped config option,
       compile error, missing input file, missing signing key
  3    infrastructure error: missing host tool, disk full, unreachable
       source, QEMU could not run, work dir locked by another run
  4    a check ran and failed (e.g. the booted kernel is not the patched one,
       a release whose sums or signatures do not verify)
  130  interrupted (Ctrl-C / SIGTERM); the last good artifacts are kept
"""


def _profile(value: str) -> str:
    """--profile: a name under profiles/kernel/, never a path."""
    try:
        return check_profile_name(value)
    except IsobuildError as exc:
        raise argparse.ArgumentTypeError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


def _arch(value: str) -> str:
    """--arch: one of builder.infra.arch.ARCHES."""
    try:
        return arch_mod.get(value, "--arch").name
    except IsobuildError as exc:
        raise argparse.ArgumentTypeError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {value!r}")
    return int(value)


def _vm_name(value: str) -> str:
    """A VM's NAME: checked before anything uses it (a log's or directory's name)."""
    try:
        return vmtool.check_name(value)
    except IsobuildError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _kinds(value: str) -> list[Kind]:
    try:
        return parse_kinds(value)
    except IsobuildError as exc:
        raise argparse.ArgumentTypeError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


def _project(args: argparse.Namespace) -> Project:
    return load_project(Path(args.config))


def _modes(text: str | None, arch: str) -> list[str]:
    """--modes for an image of ``arch`` (default: every mode it boots in)."""
    target = arch_mod.get(arch)
    return smoke.parse_modes(text, target) if text else list(smoke.modes_for(target))


def _verdict_line(verdict: Verdict) -> str:
    return (f"boot check ({verdict.extra.get('accel')}): {verdict.status} in {verdict.seconds:.1f} s"
            + (f" -- uname {verdict.markers.get('UNAME')}, marker {verdict.markers.get('MARKER')}"
               if verdict.status == "pass" else ""))


def _boot(check: kernelboot.KernelBootCheck) -> Verdict:
    stage = check.of
    with pipeline.locked(stage.project):
        return check.run(pipeline.stage_log(stage.project, f"boot-{stage.label}"))


def _wanted_tests(args: argparse.Namespace, stages: DistroStages) -> list[str] | None:
    """--tests NAME,... (checked against the tests on disk now, before any build); None: all of them."""
    text = getattr(args, "tests", None)
    if not text:
        return None
    if getattr(args, "no_guest_tests", False) or stages.guest_tests is None:
        raise UserError("--tests: no guest tests run here" + (" (--no-guest-tests)" if args.no_guest_tests else
                        f" ({project_tests(stages)})"), hint="drop --tests, or add tests under tests/guest/")
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    guesttests.choose(stages.guest_tests.plan.tests, wanted)
    return wanted


def project_tests(stages: DistroStages) -> str:
    where = stages.rootfs.project.settings.smoke.guest_tests
    return f"{where} does not exist" if where else "smoke.guest_tests is null"


def _boots(stages: DistroStages, modes: list[str], args: argparse.Namespace) -> list[Verdict]:
    """The ISO's boot checks, with the guest tests' drive unless --no-guest-tests; each verdict
    printed as soon as it exists (unless the output is JSON)."""
    stage = stages.iso
    project = stage.project

    def heard(verdict: Verdict) -> None:
        print(smoke.line(verdict), flush=True)

    wanted = _wanted_tests(args, stages)
    with pipeline.locked(project), tempfile.TemporaryDirectory(prefix="isobuild-tests-") as scratch:
        tests = None if getattr(args, "no_guest_tests", False) or stages.guest_tests is None else \
            guesttests.drive(stages.guest_tests, wanted, Path(scratch))
        return smoke.run(stage, modes, lambda mode: pipeline.stage_log(project, f"smoke-{stage.label}-{mode}"),
                         None if args.json else heard, tests)


def _smoke(stages: DistroStages, chosen: list[str], args: argparse.Namespace, built: dict[str, object]) -> int:
    as_json = args.json
    verdicts = _boots(stages, chosen, args)
    if as_json:
        print(json.dumps({**built, "smoke": [v.as_dict() for v in verdicts]}, indent=2, default=str))
    smoke.raise_for(verdicts)
    return 0


# --- handlers ---------------------------------------------------------------------------------

def cmd_kernel(args: argparse.Namespace) -> int:
    project = _project(args)
    check = kernelboot.KernelBootCheck(KernelStage(project, args.profile, args.arch)) if args.boot else None
    if check:  # QEMU, firmware and busybox for the arch: checked before the build, not after it
        check.prepare()
    done = pipeline.ensure_kernel(project, args.profile, args.arch, force=args.force)
    stage, meta = done.stage, done.meta
    verb = "built" if done.built_now else "is up to date"
    packages = pipeline.ensure_kernel_packages(stage, args.packages or [])
    verdict = _boot(check) if check else None
    if args.json:
        print(json.dumps({"kernel": meta, "packages": [p.meta for p in packages],
                          "boot": verdict.as_dict() if verdict else None}, indent=2))
    else:
        print(f"kernel {meta.get('kernel_release')} ({stage.instance}, {stage.arch}) {verb}: {stage.artifact}")
        for made in packages:
            print("\n".join(f"  {made.stage.what}: {f}" for f in made.stage.files()))
        if verdict:
            print(_verdict_line(verdict))
    if verdict:
        raise_for([verdict], "the kernel artifact")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    project = _project(args)
    if args.target == "kernel":
        verdict = _boot(kernelboot.KernelBootCheck(KernelStage(project, args.profile, args.arch)))
        print(json.dumps(verdict.as_dict(), indent=2) if args.json else _verdict_line(verdict))
        raise_for([verdict], "the kernel artifact")
        return 0
    arch = args.arch or project.settings.arch
    modes = _modes(args.modes, arch)
    return _smoke(pipeline.distro_stages(project, args.target, args.profile, arch), modes, args, {})


def cmd_distro(args: argparse.Namespace) -> int:
    project = _project(args)
    arch = args.arch or project.settings.arch
    modes = _modes(args.modes, arch)  # a typo must not wait for the build
    checked = pipeline.preflight(project, [args.distro], args.profile, arch=arch)  # every input, before any build
    stages = checked.stages[args.distro]
    _wanted_tests(args, stages)  # an unknown --tests name must not wait for the build
    done = pipeline.ensure_distro(stages, force_glibc=getattr(args, "force_glibc", False))
    record = done.meta
    if not args.json:
        print(f"{args.distro} ISO: {stages.iso.out} ({record.get('size', 0) / 2**20:.0f} MiB, "
              f"sha256 {str(record.get('sha256'))[:16]}..., kernel {record.get('kernel_release')})")
    if args.no_smoke:
        if args.json:
            print(json.dumps({"iso": record}, indent=2, default=str))
        return 0
    return _smoke(stages, modes, args, {"iso": record})


def cmd_glibc(args: argparse.Namespace) -> int:
    project = _project(args)
    tests = [t.strip() for t in (args.tests or "").split(",") if t.strip()]
    # another arch's glibc is built for the suite of the first Debian-family distro configured for it
    done = pipeline.ensure_glibc(Graph(project, None, args.arch).debian_glibc(), force=args.force, tests=tests)
    meta = done.meta
    if args.json:
        print(json.dumps({"glibc": meta}, indent=2, default=str))
    else:
        verb = "built" if done.built_now else "is up to date"
        names = ", ".join(str(x["package"]) for x in meta.get("packages", []))
        print(f"glibc {meta.get('version')} {verb}: {done.stage.artifact}/debs ({names})")
        for test, result in meta.get("tests", {}).items():
            print(f"  test {test}: {result}")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    project = _project(args)
    arch = args.arch or project.settings.arch
    ssh.ensure_key(key_dir(project), f"isobuild-vm@{project.root.name}")  # first use: the image lets it in
    stages, image = pipeline.preflight_image(project, args.distro, args.profile, arch)
    done = pipeline.ensure_image(stages, image)
    meta = done.meta
    if args.json:
        print(json.dumps({"image": meta}, indent=2, default=str))
    else:
        verb = "built" if done.built_now else "is up to date"
        print(f"{args.distro} image ({arch}) {verb}: {image.disk} ({meta.get('bytes', 0) / 2**20:.0f} MiB of "
              f"{meta.get('virtual_size', 0) / 2**30:.0f} GiB, kernel {meta.get('kernel_release')}); "
              f"start a VM: isobuild vm start NAME --image {args.distro}" +
              (f" --arch {arch}" if arch != project.settings.arch else ""))
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    project = _project(args)
    action = args.vm_action
    if action == "list":
        rows = vm.rows(project)
        print(json.dumps(rows, indent=2) if args.json else vm.render(rows))
        return 0
    if action == "start":
        arch = args.arch or project.settings.arch
        with log.stage("vm.start", vm=args.name, arch=arch):
            record = vm.start(project, args.name, args.image, arch, args.snapshot, args.port, args.firmware,
                              pipeline.stage_log(project, f"vm-{args.name}"))
        if args.json:
            print(json.dumps(next(r for r in vm.rows(project) if r["name"] == args.name), indent=2))
        else:
            print(f"vm {record.name} running ({record.arch}, {record.firmware}): ssh on 127.0.0.1:{record.port}, "
                  f"kernel {record.kernel}, SSH after {record.extra.get('ssh_seconds')} s; "
                  f"isobuild vm connect {record.name}")
        return 0
    if action == "connect":
        return vm.connect(project, args.name)
    if action == "run":
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        return vm.run(project, args.name, command)
    if action in ("copy-in", "copy-out"):
        vm.copy(project, args.name, args.src, args.dest, action == "copy-in",
                pipeline.stage_log(project, f"vm-{args.name}"))
        return 0
    if action == "test":
        wanted = [t.strip() for t in args.tests.split(",") if t.strip()] if args.tests else None
        verdict = vm.guest_tests(project, args.name, wanted, args.profile,
                                 pipeline.stage_log(project, f"vm-{args.name}-tests"))
        name = f"vm-{args.name}"
        smoke.write_results(project.logs_dir, name, [verdict])
        if args.json:
            print(json.dumps(verdict.as_dict(), indent=2, default=str))
        else:
            for test in verdict.tests:
                print(f"guest test {test['name']}: {test.get('status')} (exit {test.get('exit')}, "
                      f"{test.get('seconds')} s)")
            print(f"{name}: {verdict.status}; JUnit: {project.logs_dir / f'smoke-{name}.xml'}")
        console.raise_for([verdict], f"VM {args.name}")
        return 0
    if action == "console":
        with contextlib.suppress(KeyboardInterrupt):  # --follow ends with Ctrl-C: not an interruption
            vm.console(project, args.name, args.follow)
        return 0
    if action == "stop":
        print(f"vm {args.name}: {vm.stop(project, args.name, pipeline.stage_log(project, f'vm-{args.name}'))}")
        return 0
    if action == "clean":
        gone = vm.clean(project, args.name, args.all)
        print(f"removed: {', '.join(gone)}" if gone else "no VMs to remove")
        return 0
    raise UserError(f"vm: unknown action {action!r}")


def cmd_pkg(args: argparse.Namespace) -> int:
    project = _project(args)
    action = args.pkg_action
    path = pkg.list_path(project)
    if action == "list":
        listed = pkglist.shard(pkglist.read(path), args.shard)
        if args.json:
            print(json.dumps([e.text for e in listed]))
        else:
            print("\n".join(e.text for e in listed) if listed
                  else f"{path}: no packages listed (isobuild pkg add NAME)")
        return 0
    if action == "add":
        wanted = [pkglist.parse_entry(n, "pkg add") for n in args.names]
        added = pkglist.add(path, wanted)
        print(f"{path}: added {', '.join(e.text for e in added)}" if added else f"{path}: already listed")
        return 0
    if action == "remove":
        pkglist.remove(path, args.names)
        print(f"{path}: removed {', '.join(args.names)}")
        return 0
    if action == "status":
        rows = pkg.status_rows(project)
        print(json.dumps(rows, indent=2) if args.json else pkg.render_status(rows))
        return 0
    return _pkg_build(project, args)


def _pkg_build(project: Project, args: argparse.Namespace) -> int:
    arch = args.arch or project.settings.arch
    wanted = pkglist.shard(pkg.entries(project, args.names), args.shard)
    pkg.sweep(project.work_dir)
    ssh.ensure_key(key_dir(project), f"isobuild-vm@{project.root.name}")  # the image lets it in (its key names it)
    stages, image = pipeline.preflight_image(project, "debian", args.profile, arch)
    plugin: Any = stages.plugin
    # the build environment is the VM's root (shared by projects), not the project's image of it
    plan = pkg.plan(project, plugin, list(plugin.settings.components), arch, image.rootfs.key, wanted,
                    not args.names, args.force)
    outcomes = pkg.skipped(plan)
    if plan.jobs:
        pkg.prepare_all(plan, pipeline.stage_log(project, f"pkg-{arch}-prepare"))
        try:
            outcomes += _pkg_run(project, args, stages, image, plan)
        finally:
            pkg.discard(plan)
    json_path, xml_path = pkg.write_results(project, arch, outcomes)
    if args.json:
        print(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2))
    else:
        print(pkg.table(outcomes))
        print(f"results: {json_path}, JUnit: {xml_path}")
    failed = [o for o in outcomes if o.status not in ("built", "skipped")]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(outcomes)} package builds failed: "
                          f"{', '.join(o.name for o in failed)}",
                          details=[line for o in failed for line in [o.error, *o.details[-6:]]],
                          hint="each failure's log is named above; the other packages are built")
    return 0


def _pkg_run(project: Project, args: argparse.Namespace, stages: DistroStages, image: Any,
             plan: pkg.Plan) -> list[pkg.Outcome]:
    """The image (built if it changed), distcc's tool root if asked for, the apt proxy; then the builds."""
    arch = plan.arch.name
    pipeline.ensure_image(stages, image)
    plugin: Any = stages.plugin
    root = major = None
    if args.distcc:
        tools = distcc.tool_root(plugin.suite, plugin.mirror(), plugin.keyring(), plan.arch, plugin.release,
                                 project.work_dir)
        root = tools.ensure(pipeline.stage_log(project, f"distcc-root-{arch}"))
        major = tools.major()
    parallel = min(args.parallel or pkg.default_parallel(project), len(plan.jobs))
    with log.stage("pkg.build-all", arch=arch, packages=len(plan.jobs), parallel=parallel, distcc=args.distcc), \
            aptproxy.AptProxy(plugin.mirror(), project.work_dir / "cache" / "pkg-archives") as proxy:
        env = pkg.Env(project, plan, image.disk, proxy, pkg.Registry(), root, major)

        def report(o: pkg.Outcome) -> None:  # as each build ends
            if not args.json:
                print(f"{o.name} ({o.arch}): {o.status} in {o.seconds:.0f} s"
                      + (f": {o.error}" if o.error else f", {len(o.debs)} .deb"), flush=True)

        return pkg.run(env, parallel, args.distcc,
                       lambda job: pipeline.stage_log(project, f"pkg-{arch}-{job.source.name}"), report)


def _steps(project: Project, names: list[str], args: argparse.Namespace, arch: str,
           prefix: str = "") -> list[pipeline.Step]:
    """kernel, glibc (if any distro takes it), then per distro its ISO and boot checks, for ``arch``;
    ``prefix`` names the arch's steps in a matrix of several."""
    modes = _modes(args.modes, arch)  # a typo must not wait for the builds
    checked = pipeline.preflight(project, names, args.profile, keep_going=args.keep_going, arch=arch)
    graph = checked.graph
    steps = [pipeline.Step(f"{prefix}kernel", [],
                           lambda: pipeline.ensure(graph.kernel()).meta.get("kernel_release", ""))]
    # Debian's glibc stage (per suite); an EL distro's glibc-rpm stage runs inside its ISO step
    glibc_for = {n: s.glibc for n, s in checked.stages.items() if s.glibc is not None and s.glibc.kind == "glibc"}
    glibc_steps: dict[str, str] = {}
    for stage in glibc_for.values():
        if stage.key in glibc_steps:
            continue
        name = f"{prefix}glibc" if not glibc_steps else f"{prefix}glibc-{len(glibc_steps) + 1}"
        glibc_steps[stage.key] = name
        steps.append(pipeline.Step(name, [], lambda stage=stage: pipeline.ensure_glibc(stage).meta.get("version", "")))
    for name in names:
        deps = [f"{prefix}kernel", *([glibc_steps[glibc_for[name].key]] if name in glibc_for else [])]

        def build_iso(name: str = name) -> str:
            if name in checked.failed:  # --keep-going: this distro failed its checks, the others go on
                raise checked.failed[name]
            record = pipeline.ensure_distro(checked.stages[name]).meta
            return f"{checked.stages[name].iso.out} ({int(record.get('size', 0)) // 2**20} MiB)"

        def check(name: str = name) -> str:
            verdicts = _boots(checked.stages[name], modes, args)
            smoke.raise_for(verdicts)
            return ", ".join(f"{v.extra.get('mode')} {v.status} {v.seconds:.0f} s" for v in verdicts)

        steps.append(pipeline.Step(f"{prefix}{name}-iso", deps, build_iso))
        if not args.no_smoke:
            steps.append(pipeline.Step(f"{prefix}{name}-smoke", [f"{prefix}{name}-iso"], check))
    return steps


def _run_steps(steps: list[pipeline.Step], args: argparse.Namespace) -> int:
    outcomes = pipeline.run_stages(steps, keep_going=args.keep_going)
    if args.json:
        print(json.dumps([o.as_dict() for o in outcomes], indent=2))
    else:
        width = max([16, *(len(o.name) + 1 for o in outcomes)])
        for o in outcomes:
            print(f"{o.name:<{width}} {o.status:<8} {o.seconds:7.1f} s  {o.detail}")
    return next((o.exit_code for o in outcomes if o.exit_code), 0)


def cmd_all(args: argparse.Namespace) -> int:
    project = _project(args)
    return _run_steps(_steps(project, ["debian"], args, args.arch or project.settings.arch), args)


def matrix(project: Project, only: str | None) -> list[tuple[str, list[str]]]:
    """``isobuild isos``: per arch (the configured one first), the enabled distros whose settings list it;
    ``only`` narrows it to one arch."""
    enabled = {name: distros.load(project, name).arches() for name in distros.enabled(project)}
    arches = list(dict.fromkeys([project.settings.arch, *(a for listed in enabled.values() for a in listed)]))
    if only is not None:
        if not any(only in listed for listed in enabled.values()):
            raise UserError(f"--arch {only}: no enabled distro is configured for it",
                            hint="add it to a distro's 'arches' in distros/<name>.yaml")
        arches = [only]
    return [(a, names) for a in arches if (names := [n for n, listed in enabled.items() if a in listed])]


def cmd_isos(args: argparse.Namespace) -> int:
    project = _project(args)
    plan = matrix(project, args.arch)
    if args.modes and len(plan) > 1:
        raise UserError("--modes with several arches: their images boot in different modes",
                        hint="add --arch to pick one")
    steps: list[pipeline.Step] = []
    for arch, names in plan:
        steps += _steps(project, names, args, arch, prefix=f"{arch}/" if len(plan) > 1 else "")
    return _run_steps(steps, args)


def cmd_status(args: argparse.Namespace) -> int:
    rows = status.rows(_project(args), args.profile, args.arch)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(status.table(rows))
    if args.check and any(r.state not in ("built", "pass") for r in rows if r.stage != "vm"):  # VMs are not stages
        return ExitCode.CHECK_FAILED
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        project: Project | None = _project(args)
    except IsobuildError:
        project = None  # doctor answers for the host even when the settings are broken
    gs = project.settings.glibc if project else GlibcSettings()
    tools = doctor.tools(project)
    missing = doctor.missing(tools)
    log_file = Path(args.log) if args.log else (project.logs_dir / "doctor-install.log" if project
                                                 else Path("doctor-install.log").absolute())
    if args.install and missing:
        doctor.install(missing, log_file)
        missing = doctor.missing(tools)
    deps = doctor.glibc_build_deps(glibc.DEBIAN_GLIBC / "debian" / "control", gs.profiles) if gs.enabled else []
    if args.install and deps:
        glibc.install_build_deps(glibc.DEBIAN_GLIBC, gs.profiles, log_file)
        deps = doctor.glibc_build_deps(glibc.DEBIAN_GLIBC / "debian" / "control", gs.profiles)
    if args.install and any(doctor.binfmt().values()):
        doctor.enable_binfmt(log_file)
    binfmt = doctor.binfmt()
    rows = [{"tool": t.name, "package": t.package, "used_by": t.used_by, "present": t.present()} for t in tools]
    contained, contained_why = doctor.namespaces()
    el_path, el_why = doctor.el_build()
    if args.json:
        print(json.dumps({"tools": rows, "install": doctor.apt_line(missing), "glibc_build_deps": deps,
                          "el_build": {"path": el_path, "why": el_why},
                          "namespaces": {"ok": contained, "why": contained_why},
                          "binfmt": binfmt}, indent=2))
        return ExitCode.INFRA if missing or deps or not contained or any(binfmt.values()) else 0
    width = max(len(str(r["tool"])) for r in rows)
    package_width = max(len(str(r["package"])) for r in rows)
    for r in rows:
        mark = "ok     " if r["present"] else "MISSING"
        print(f"{mark}  {str(r['tool']).ljust(width)}  {str(r['package']).ljust(package_width)}  {r['used_by']}")
    if deps is None:
        print("\nglibc build dependencies: not checked (glibc-source or dpkg-dev is not installed)")
    elif deps:
        print(f"\nglibc build dependencies missing: {' '.join(deps)}\n"
              f"  install them: apt-get build-dep --arch-only {glibc.DEBIAN_GLIBC}/  (or isobuild doctor --install)")
    else:
        print("\nglibc build dependencies: all present")
    print(f"\nalma, rocky with build: auto: {el_path} ({el_why})")
    print(f"\nbuild roots (the root's commands in private mount and PID namespaces"
          f"{', as this ordinary user' if os.geteuid() else ''}): "
          f"{'ok' if contained else 'NOT POSSIBLE'} ({contained_why})")
    print("\nforeign roots (another arch's programs through qemu-user-static): " + ", ".join(
        f"{name} {'ok' if why is None else 'NOT POSSIBLE (' + why + ')'}" for name, why in binfmt.items()))
    if any(binfmt.values()):
        print(f"  enable them, as root: {doctor.binfmt_hint()}  (or isobuild doctor --install)")
    if missing:
        print(f"\nto install what is missing, as root:\n  {doctor.apt_line(missing)}")
    else:
        print("\nall host tools are present")
    return ExitCode.INFRA if missing or deps or not contained or any(binfmt.values()) else 0


def cmd_clean(args: argparse.Namespace) -> int:
    project = _project(args)
    with lock.held(project.work_dir):  # not pipeline.locked: its sweep would not wait for --dry-run
        removed = clean.clean(project.work_dir, dry_run=args.dry_run, iso_dir=project.iso_dir)
    total = sum(size for _, size in removed)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in removed:
        print(f"{verb} {path} ({size / 2**20:.1f} MiB)")
    print(f"{verb} {len(removed)} item(s), {total / 2**20:.1f} MiB; "
          "kept the caches and every artifact a project's last good build uses")
    return 0


def cmd_rebuild_check(args: argparse.Namespace) -> int:
    project = _project(args)
    arch = args.arch or project.settings.arch
    checked = pipeline.preflight(project, [args.distro], args.profile, arch=arch)
    stages = checked.stages[args.distro]
    suffix = "" if arch == "x86_64" else f"-{arch}"
    log_path = pipeline.stage_log(project, f"rebuild-check-{args.distro}{suffix}")
    with log.stage("rebuild-check", distro=args.distro, arch=arch):
        verdict = rebuild.run(project, stages, args.distro, args.profile, arch, args.keep, log_path, args.start)
    project.logs_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(project.logs_dir / f"rebuild-check-{args.distro}{suffix}.json", verdict.as_dict())
    print(json.dumps(verdict.as_dict(), indent=2) if args.json else rebuild.render(verdict))
    if not verdict.reproducible:
        first = verdict.first[0] if verdict.first else "a stage's key"
        raise CheckFailed(f"rebuild-check {args.distro} ({arch}): not reproducible, first difference {first}",
                          details=[f"log: {log_path}"])
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    project = _project(args)
    done = lockcmd.refresh(project, args.distro, [args.arch] if args.arch else None)
    for item in done:
        if item.new:
            print(f"{item.root} {item.arch}: {item.packages} packages locked (a new section)")
            continue
        print(f"{item.root} {item.arch}: {item.packages} packages locked; {len(item.changes) or 'nothing'} changed")
        for line in item.changes[:50]:
            print(f"  {line}")
    print(f"wrote {project.root / 'distros' / (args.distro + '.lock')}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    project = _project(args)
    if args.cache_action == "push":
        with lock.held(project.work_dir):  # no clean drops an artifact while it is read
            done = cache.push_all(project)
        failed = [(item, why) for item, why in done if why not in ("pushed", "had")]
        for item, why in done:
            print(f"{why if why in ('pushed', 'had') else 'failed'} {item.label} {item.key[:12]}")
        print(f"{sum(w == 'pushed' for _, w in done)} pushed, {sum(w == 'had' for _, w in done)} already in the store"
              + (f", {len(failed)} could not be pushed" if failed else ""))
        if failed:
            raise InfraError(f"{len(failed)} artifact(s) could not be pushed, first {failed[0][0].label}: "
                             f"{failed[0][1]}", details=[f"{i.label}: {w}" for i, w in failed[1:]])
        return 0
    if args.cache_action == "key":
        print(cache.stage_key(project, args.stage, args.name, args.profile, args.arch))
        return 0
    if args.cache_action == "prune":
        doomed = cache.prune(project, args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for entry in doomed:
            print(f"{verb} {entry.kind} {entry.key[:12]} ({entry.size / 2**20:.1f} MiB)")
        print(f"{verb} {len(doomed)} entr{'y' if len(doomed) == 1 else 'ies'}, "
              f"{sum(e.size for e in doomed) / 2**20:.1f} MiB; kept what a project of this work dir uses")
        return 0
    print(cache.render(project))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    project = _project(args)
    with pipeline.locked(project):  # no ISO stage may replace an ISO while it is summed and signed
        made = release.make(project, args.key, Path(args.out) if args.out else None,
                            pipeline.stage_log(project, "release"))
    for path in made.files:
        print(f"wrote {path}")
    print(f"release in {made.directory}: {sum(p.name.endswith('.iso.asc') for p in made.files)} ISO(s) "
          f"signed by {made.key.describe()}; check it with: isobuild release verify {made.directory}")
    return 0


def cmd_release_verify(args: argparse.Namespace) -> int:
    project = _project(args)
    where = args.dir or args.out
    done = release.verify(project, Path(where) if where else None, args.key,
                          pipeline.stage_log(project, "release-verify"))
    for rel in done.files:
        print(f"ok {rel}")
    print(f"release in {done.directory} verifies: {len(done.files)} file(s), "
          f"signed by {done.signer}{f' ({done.uid})' if done.uid else ''}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    project = _project(args)
    out = Path(args.out).absolute() if args.out else report.default_path(project)
    report.write(project, out, args.profile)
    print(f"report: {out}")
    return 0


def cmd_distclean(args: argparse.Namespace) -> int:
    project = _project(args)
    result = clean.distclean(project, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in result.removed:
        print(f"{verb} {path} ({size / 2**20:.1f} MiB)")
    for path in result.kept:
        print(f"kept {path}: not made by isobuild")
    print(f"{verb} {len(result.removed)} item(s), {sum(s for _, s in result.removed) / 2**20:.1f} MiB, "
          "caches and outputs included")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    project = _project(args)
    log_path = pipeline.stage_log(project, f"patches-{args.patches_action}")
    if args.patches_action == "generate":
        comp = patches.COMPONENTS[args.component]
        out = patches.output_dir(project, args.out) if args.out else comp.patch_dir(project)
        made = patches.generate(Path(args.repo), args.base, args.head, out, log_path)
        for g in made:
            print(f"  {g.name}  ({g.commit[:12]})")
        print(f"wrote {len(made)} patch(es) and series to {out}")
        return 0
    reports = [patches.check(project, comp, log_path, refresh=args.patches_action == "refresh",
                             accept_fuzz=getattr(args, "accept_fuzz", False))
               for comp in patches.selected(args.component, project)]
    print(patches.to_json(reports) if args.json else "\n".join(patches.render(r) for r in reports))
    patches.verdict(reports)
    return 0


# --- the table of verbs -----------------------------------------------------------------------

@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    description: str
    func: Callable[[argparse.Namespace], int] | None
    args: tuple[Arg, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    actions: tuple[Verb, ...] = ()  # sub-verbs (release verify; patches generate/check/refresh)
    action_dest: str = ""
    actions_required: bool = False


PROFILE = arg("--profile", type=_profile, help="kernel profile from profiles/kernel/ (default: kernel.profile)")
ARCH = arg("--arch", type=_arch, help="target architecture: x86_64, arm64 or riscv64 (default: arch in isobuild.yaml)")
STATUS_PROFILE = arg("--profile", type=_profile,
                     help="kernel profile the distro rows are computed for (default: kernel.profile)")
MODES = arg("--modes", help="boot modes, comma-separated (default: every mode of the arch: x86_64 bios-cd,bios-usb,"
            "uefi-cd,uefi-usb; arm64 uefi-cd,uefi-usb; riscv64 uefi-disk)")
NO_SMOKE = arg("--no-smoke", action="store_true", help="build the ISO only")
GUEST_TESTS = arg("--tests", metavar="T1,T2", help="run only these guest tests (tests/guest/<name>.c|.sh) in the "
                  "booted image (default: all)")
NO_GUEST_TESTS = arg("--no-guest-tests", action="store_true", help="boot without the guest tests' drive")
JSON = arg("--json", action="store_true", help="machine-readable output")
DRY_RUN = arg("--dry-run", action="store_true", help="only list what would be removed")
VM_NAME_ARG = arg("name", metavar="NAME", type=_vm_name, help="the VM's name (A-Z a-z 0-9 _ . -)")
KEEP_GOING = arg("--keep-going", action="store_true", help="after a failure, still run the stages that do not "
                 "depend on the failed one; exit with the first failure's code")


def _el_verb(name: str, title: str) -> Verb:
    return Verb(
        name, f"build the {title} live ISO (kernel, glibc RPM, rootfs, ISO as needed) and boot-test it",
        f"Build what changed of kernel (and its RPM) and the patched glibc RPM (the distribution's glibc source RPM "
        f"rebuilt with patches/glibc/series; glibc: in distros/{name}.yaml) -> {title} root filesystem -> hybrid "
        f"BIOS/UEFI ISO (iso/{name}/<name>.iso, .sha256, .manifest.json) from distros/{name}.yaml and its kickstart "
        "(checked with pykickstart first): with mock + livemedia-creator on an EL host, else with dnf --installroot "
        "from the configured repositories (isobuild doctor says which); dracut's dmsquash-live boots it "
        "(root=live:CDLABEL=<label>). Then boot it in QEMU like the Debian ISO.",
        cmd_distro, (PROFILE, ARCH, MODES, NO_SMOKE, GUEST_TESTS, NO_GUEST_TESTS,
                     arg("--json", action="store_true", help="print the ISO record and "
                     "smoke verdicts as JSON"),
                     arg("--force-glibc", action="store_true", help="download the repositories' newest glibc source "
                         "RPM again and rebuild the glibc RPM")), {"distro": name})


VERBS: tuple[Verb, ...] = (
    Verb("kernel", "build the kernel (if its inputs changed)",
         "Apply patches/kernel/series with quilt at fuzz 0, merge the profile's config fragments, fail if any "
         "requested CONFIG_* did not land, build the kernel image + modules out of tree. Its packages (linux-image, "
         "linux-libc-dev, the kernel RPM, kernel-headers for EL guest tests) are made from that build when "
         "something needs them. "
         "Nothing is rebuilt when the stage key (source, patches, config, arch, toolchain) is unchanged.",
         cmd_kernel, (PROFILE, ARCH,
                      arg("--boot", action="store_true", help="then boot it in QEMU with a busybox initramfs and "
                          "check the release and the patched marker"),
                      arg("--force", action="store_true", help="rebuild even if an artifact with this key exists"),
                      arg("--packages", metavar="KINDS", type=_kinds, help="also make these of its packages "
                          "(comma-separated: deb-image, deb-libc-dev, rpm, rpm-headers); the distro verbs make "
                          "the ones they install"),
                      arg("--json", action="store_true", help="print the build's metadata (and the boot verdict) "
                          "as JSON"))),
    Verb("debian", "build the Debian live ISO (kernel, glibc, rootfs, ISO as needed) and boot-test it",
         "Build what changed of kernel + glibc packages -> Debian root filesystem -> hybrid BIOS/UEFI ISO "
         "(iso/debian/<name>.iso, .sha256, .manifest.json), then boot it in QEMU from CD and USB under BIOS and "
         "UEFI and check the running kernel and glibc are the patched ones, systemd has no failed units and the "
         "project's guest tests (tests/guest/) pass. --arch arm64 or riscv64: the same image for that arch (glibc "
         "cross-built, the root through qemu-user, a UEFI-only ISO booted on QEMU's virt board: arm64 from CD and "
         "USB, riscv64 through OpenSBI + U-Boot from a disk). Every input of every stage is checked first.",
         cmd_distro, (PROFILE, ARCH, MODES, NO_SMOKE, GUEST_TESTS, NO_GUEST_TESTS,
                      arg("--json", action="store_true", help="print the ISO record and smoke verdicts as JSON")),
         {"distro": "debian"}),
    _el_verb("alma", "AlmaLinux"),
    _el_verb("rocky", "Rocky Linux"),
    Verb("image", "build a distro's disk image for build VMs (qcow2: our kernel and glibc, SSH, build tools)",
         "Build what changed of kernel + glibc packages -> the distro's root with vm.packages added (SSH server, "
         "build-essential, devscripts, fakeroot, equivs) and the project's SSH key for root (an ed25519 pair made on "
         "first use in the work dir, 0600; no password logins; host keys made at the VM's first boot) -> a GPT "
         "disk (qcow2, vm.image_size): ext4 root made by mkfs.ext4 -d (no loop mounts), an EFI system partition "
         "with GRUB, and on x86_64 GRUB for BIOS too. Boots with SeaBIOS or OVMF on x86_64 (vm.firmware; default "
         "BIOS), AAVMF on arm64, OpenSBI + U-Boot on riscv64. Then: isobuild vm start NAME.",
         cmd_image, (PROFILE, ARCH, arg("--json", action="store_true", help="print the image's metadata as JSON"),
                     arg("distro", nargs="?", default="debian", help="the distro (default: debian)"))),
    Verb("vm", "build VMs from disk images: start, run commands, copy files, stop",
         "Each VM is its own QEMU over a qcow2 overlay of the distro's image (the image is never written), "
         "user-mode networking with the guest's SSH forwarded to a free localhost port (vm.base_port up), its "
         "serial console in a log, QMP for a clean ACPI poweroff. VMs outlive the command that started them until "
         "vm stop. Resources: vm.cpus, vm.memory, vm.disk, vm.base_port (env ISOBUILD_VM_CPUS, _MEMORY, _DISK, "
         "_BASE_PORT).",
         cmd_vm, actions=(
             Verb("list", "every VM of this project: state (running, stopped, dead), port, pid, memory", "", None,
                  (JSON,)),
             Verb("start", "create a VM (an overlay of the image) and boot it; returns once SSH answers", "", None,
                  (VM_NAME_ARG,
                   arg("--image", default="debian", help="a distro whose image isobuild image built (default: "
                       "debian), or a .qcow2 file"), ARCH,
                   arg("--snapshot", action="store_true", help="discard every write to the disk when QEMU exits"),
                   arg("--port", type=int, help="localhost port for its SSH (default: the first free from "
                       "vm.base_port)"),
                   arg("--firmware", choices=["bios", "uefi"], help="x86_64: bios or uefi (default: vm.firmware)"),
                   JSON)),
             Verb("connect", "log in (interactive ssh as root)", "", None, (VM_NAME_ARG,)),
             Verb("run", "run a command in the VM; its stdout/stderr stream here and its exit code is isobuild's",
                  "", None, (VM_NAME_ARG, arg("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                                             help="the command and its arguments (each one word in the guest)"))),
             Verb("copy-in", "copy a host file or directory into the VM", "", None,
                  (VM_NAME_ARG, arg("src", help="host path"), arg("dest", help="guest path"))),
             Verb("copy-out", "copy a file or directory out of the VM", "", None,
                  (VM_NAME_ARG, arg("src", help="guest path"), arg("dest", help="host path"))),
             Verb("test", "run the project's guest tests (tests/guest) in the VM; exit 4 naming a failing test",
                  "", None, (VM_NAME_ARG, GUEST_TESTS, PROFILE, JSON)),
             Verb("console", "print the VM's serial console log", "", None,
                  (VM_NAME_ARG, arg("--follow", "-f", action="store_true", help="keep printing until the VM "
                                    "stops (or Ctrl-C)"))),
             Verb("stop", "ACPI poweroff through QMP; QEMU killed after vm.stop_timeout", "", None, (VM_NAME_ARG,)),
             Verb("clean", "remove a VM (or every VM): QEMU stopped, overlay and logs deleted", "", None,
                  (arg("name", nargs="?", metavar="NAME", type=_vm_name, help="the VM"),
                   arg("--all", action="store_true", help="every VM of this project")))),
         action_dest="vm_action", actions_required=True),
    Verb("pkg", "build Debian source packages natively in VMs, in parallel (distcc to the host optional)",
         "Per source package a fresh VM from the arch's disk image (isobuild image; an overlay deleted afterwards): "
         "the source from the suite's mirror (every file checked against the signed Sources index), a local .dsc or "
         "an unpacked tree; our quilt series pkg.patches/<source>/series applied at fuzz 0 (version + pkg.suffix); "
         "apt-get build-dep through isobuild's loopback proxy of the suite's mirror (the guest reaches nothing "
         "else); dpkg-buildpackage -b; .debs, .buildinfo and the build log in <work>/pkgs/<arch>/<source>/<version>/. "
         "A package built with the same key is skipped. The package list (pkg.list) names what 'pkg build' with no "
         "names builds.",
         cmd_pkg, actions=(
             Verb("build", "build source packages (named, or the package list) in VMs; exit 4 if one fails", "", None,
                  (arg("names", nargs="*", metavar="SRC", help="source package names (name or name=version), "
                       "./dir or ./x.dsc (default: the package list)"), ARCH, PROFILE,
                   arg("-j", "--parallel", type=_positive, metavar="N", help="VMs at once (default: pkg.parallel, else "
                       "from the host's CPUs and memory)"),
                   arg("--distcc", action="store_true", help="compile on the host: distccd (the guest suite's, with "
                       "its cross compiler) on 127.0.0.1, reached from the guest through QEMU"),
                   arg("--force", action="store_true", help="build even if this key was built"),
                   arg("--shard", metavar="I/N", help="only every N-th package from the I-th (a CI matrix job)"),
                   JSON)),
             Verb("list", "the package list", "", None,
                  (arg("--shard", metavar="I/N", help="only shard I of N"), JSON)),
             Verb("add", "add packages to the list", "", None,
                  (arg("names", nargs="+", metavar="SRC", help="name, name=version, ./dir or ./x.dsc"),)),
             Verb("remove", "remove packages from the list", "", None,
                  (arg("names", nargs="+", metavar="SRC", help="source package names"),)),
             Verb("status", "per package and arch: the last build's outcome and the versions built", "", None,
                  (JSON,))),
         action_dest="pkg_action", actions_required=True),
    Verb("glibc", "build the patched glibc packages (if their inputs changed)",
         "Take the distribution's glibc source (Debian: glibc-source, with Debian's own series), append "
         "patches/glibc/series and apply it with quilt at fuzz 0 (a patch that does not apply fails in seconds), "
         "give it the version <distro's>+isobuild1, install missing build dependencies, and build the "
         "distribution's own packages (libc6, libc-bin, libc6-dev, ...) with dpkg-buildpackage. isobuild debian "
         "installs them in the ISO and its boot check proves the patched glibc runs.",
         cmd_glibc, (ARCH, arg("--force", action="store_true", help="rebuild even if packages with this key exist"),
                     arg("--tests", metavar="T1,T2", help="then run these glibc tests (with glibc.tests) in the "
                         "kept build tree, e.g. string/test-strlen,elf/tst-auxv; exit 4 if one fails"),
                     arg("--json", action="store_true", help="print the build's metadata as JSON"))),
    Verb("all", "kernel + glibc + the Debian ISO + its boot checks",
         "The product's default job: build what changed of the kernel, the glibc packages and the Debian live ISO, "
         "then boot-test the ISO in every mode. Stages run in dependency order, each only if its key changed.",
         cmd_all, (PROFILE, ARCH, MODES, GUEST_TESTS, NO_GUEST_TESTS,
                   arg("--no-smoke", action="store_true", help="build only, no boot checks"), KEEP_GOING,
                   arg("--json", action="store_true", help="print each stage's outcome as JSON"))),
    Verb("isos", "kernel + glibc + every enabled distro's ISO + boot checks",
         "Like 'all' for every distro in distros/*.yaml that is enabled, for each arch its 'arches' lists.",
         cmd_isos, (PROFILE, arg("--arch", type=_arch, help="only this arch (default: every arch an enabled distro "
                                 "lists in its 'arches')"), MODES, GUEST_TESTS, NO_GUEST_TESTS,
                    arg("--no-smoke", action="store_true", help="build only, no boot checks"), KEEP_GOING,
                    arg("--json", action="store_true", help="print each stage's outcome as JSON"))),
    Verb("test", "re-run a boot check on what was built", "Boot the built artifact again and check it.",
         cmd_test, (arg("target", choices=["kernel", "debian", "alma", "rocky"], help="what to test"), PROFILE,
                    ARCH, MODES, GUEST_TESTS, NO_GUEST_TESTS,
                    arg("--json", action="store_true", help="print the verdict as JSON"))),
    Verb("status", "show every stage: built / stale (what changed) / missing / failed",
         "Recompute each stage key from the inputs on disk and compare with what this project built. Builds "
         "nothing.",
         cmd_status, (JSON, arg("--check", action="store_true", help="exit 4 unless every stage is built and every "
                                "check passed"), STATUS_PROFILE,
                      arg("--arch", type=_arch, help="only this arch (default: the configured arch and every arch "
                          "this project has built)"))),
    Verb("doctor", "check the host tools the pipeline needs",
         "List every host tool, whether it is present, and the apt-get line that installs what is missing; "
         "whether this host can run a build root's commands in namespaces (as this user). Exits 3 when something "
         "is missing.",
         cmd_doctor, (JSON, arg("--install", action="store_true", help="apt-get install what is missing (as root)"),
                      arg("--log", help="log file for --install (default: logs_dir/doctor-install.log)"))),
    Verb("clean", "remove build trees and superseded artifacts",
         "Remove build trees, artifacts no project's last good build uses (every project that shares the work "
         "dir is asked), and what killed runs left. Keeps the source and package caches, and everything in iso/.",
         cmd_clean, (DRY_RUN,)),
    Verb("rebuild-check", "rebuild a distro's ISO from nothing elsewhere and compare every file; exit 4 if one "
         "differs",
         "Every stage of the ISO (kernel, its package, glibc, root, ISO) is built again by isobuild in a copy of the "
         "project's files in another directory, with a new empty work dir, no stage store and the same lock; every "
         "file of every rebuilt artifact is compared by sha256 with this project's (metadata.json aside). Prints "
         "'reproducible', or the first differing file with a diffoscope summary (diffoscope-minimal); "
         "logs/rebuild-check-<distro>.json keeps the verdict. The distro must be built first.",
         cmd_rebuild_check, (arg("distro", help="a distro of distros/*.yaml"), PROFILE, ARCH,
                             arg("--from", dest="start", choices=rebuild.FROM, default="kernel",
                                 help="kernel (default): rebuild every stage; rootfs: rebuild the root and the ISO "
                                 "over this project's kernel and glibc (minutes, not half an hour)"),
                             arg("--keep", action="store_true", help="keep the rebuild's directories (named at the "
                                 "end) for a look"), JSON)),
    Verb("lock", "resolve a distro's package lock again against its mirror (distros/<distro>.lock)",
         "A Debian-family distro's root is bootstrapped with exactly the versions distros/<distro>.lock names for the "
         "root and arch (apt preferences pin each); the lock is written by the first build of a root and is part of "
         "its key, so the mirror moving on changes nothing until the lock is refreshed on purpose: this resolves "
         "every root of the distro (its build VM's too, when the lock has one) with mmdebstrap --simulate and "
         "rewrites the lock, printing what changed.",
         cmd_lock, (arg("distro", help="a distro of distros/*.yaml (Debian family)"),
                    arg("--arch", type=_arch, help="only this arch (default: every arch the distro lists)"))),
    Verb("cache", "the shared stage store: list it, push this project's artifacts, prune it",
         "A directory shared by machines or CI runners (cache.store, env ISOBUILD_CACHE_STORE) holding built stage "
         "artifacts by kind and key. Every build pulls a missing stage from it before building (each file checked "
         "against the sha256 its entry recorded; an entry that fails is refused and the stage built here) and, with "
         "cache.push (env ISOBUILD_CACHE_PUSH=1), pushes what it built or reused. With env ISOBUILD_CACHE_SECRET "
         "(a secret the trusting machines share) entries are signed (HMAC-SHA256 of the manifest) and unsigned or "
         "otherwise signed ones refused.",
         cmd_cache, actions=(
             Verb("list", "the store's entries (kind, key, size; this project's marked)", "", None),
             Verb("push", "put every current artifact of this project into the store", "", None),
             Verb("prune", "remove entries no project of this work dir uses", "", None, (DRY_RUN,)),
             Verb("key", "print a stage's key from the inputs on disk (what a CI cache entry is keyed by)", "", None,
                  (arg("stage", help="kernel, glibc, rootfs, ... (the stage column of isobuild status)"),
                   arg("--name", help="the instance (default: a kernel's profile, else the first)"), PROFILE,
                   ARCH))),
         action_dest="cache_action", actions_required=True),
    Verb("release", "sum and sign the built ISOs (SHA256SUMS, GnuPG signatures)",
         "Write SHA256SUMS over every ISO in iso/<distro>/ and its manifest (paths relative to the release "
         "directory: 'sha256sum -c SHA256SUMS' works there), a detached ASCII-armored signature SHA256SUMS.asc and "
         "one per ISO (<name>.iso.asc), signed with release.key from isobuild.yaml or --key. A key that wants a "
         "passphrase reads it from $ISOBUILD_GPG_PASSPHRASE. Files are renamed into place only once every "
         "signature is made. 'isobuild release verify' checks a release.",
         cmd_release, (arg("--key", help="signing key: fingerprint, key id or user id (default: release.key)"),
                       arg("--out", metavar="DIR", help="assemble the release in DIR: the ISOs and manifests are "
                           "linked (or copied) there beside the sums and signatures (default: sign in place, in "
                           "iso/)")),
         actions=(Verb("verify", "check a release's signatures and sums",
                       "Check SHA256SUMS.asc, every file SHA256SUMS lists against its sha256, every ISO's signature, "
                       "and that no ISO in the directory is left out. With a key (--key or release.key) every "
                       "signature must be that key's. Exits 4 naming the first missing or changed file or bad "
                       "signature.",
                       cmd_release_verify,
                       (arg("dir", nargs="?", metavar="DIR", help="release directory (default: iso/)"),
                        arg("--key", default=argparse.SUPPRESS, help="the key every signature must be made with "
                            "(default: release.key; none: any key gpg knows)"))),),
         action_dest="release_action"),
    Verb("report", "write the build report: one static HTML page",
         "Write one self-contained HTML page (no external assets) with every stage's state, timings and key (the "
         "rows of 'isobuild status'), each boot check's verdict with its console log, each ISO's package manifest "
         "and the patch series with sha256s. Builds nothing.",
         cmd_report, (arg("--out", metavar="FILE", help="where to write it (default: iso/report.html)"),
                      STATUS_PROFILE)),
    Verb("distclean", "remove everything isobuild made: work dir (caches too), iso/, logs/",
         "Remove what isobuild made in the work dir (build trees, artifacts, records, source and package caches), "
         "the ISOs, sums, signatures and report in iso/, and the logs in logs/. Files isobuild does not make are "
         "kept and listed. Refuses a work dir without isobuild's marker, and a work or logs dir that is /, a home "
         "directory, the project or a parent of it. Writes no log of its own (it would remove it): what it removes "
         "is printed. Compare 'clean', which keeps the caches and the last good outputs.",
         cmd_distclean, (DRY_RUN,)),
    Verb("patches", "make a quilt series from git; check or refresh the series against a fresh tree",
         "generate: the commits between --base and --head of a git branch become NNNN-subject.patch files (git "
         "format-patch: commit message headers) and a series, swapped in whole. check: apply each series to a "
         "fresh pristine tree with quilt at fuzz 0 and report every patch as clean, offset, fuzz or fails (file and "
         "hunk) in seconds, before any long build. refresh: rewrite offset patches so they apply exactly (quilt "
         "refresh, headers kept). check and refresh exit 0 when every patch applies at fuzz 0 (offsets are a "
         "warning: the build accepts them) and 2 when any needs fuzz or fails.",
         cmd_patches, actions=(
             Verb("generate", "write the series from the commits base..head of a git repository (oldest first); "
                  "refuses merge commits, empty commits and binary changes", "", None,
                  (arg("--component", choices=["kernel", "glibc"], default="kernel",
                       help="whose series (default: kernel)"),
                   arg("--repo", required=True, metavar="PATH", help="the git repository"),
                   arg("--base", required=True, metavar="REF", help="where the branch forked (not included)"),
                   arg("--head", required=True, metavar="REF", help="the branch tip (included)"),
                   arg("--out", metavar="DIR", help="patch directory, in the project (default: the component's, "
                       "e.g. kernel.patches); files its old series did not list are kept"))),
             Verb("check", "apply every series to a fresh tree at fuzz 0; report clean / offset / fuzz / fails per "
                  "patch", "", None,
                  (arg("--component", choices=["kernel", "glibc", "all"], default="all",
                       help="whose series (default: all: kernel, and glibc when its stage can make a tree)"), JSON)),
             Verb("refresh", "rewrite offset patches (with --accept-fuzz also fuzz ones) so they apply exactly; "
                  "patches that fail are left alone and reported", "", None,
                  (arg("--accept-fuzz", action="store_true", help="also refresh patches that only apply with fuzz "
                       "(review the result: fuzz can misplace a hunk)"),
                   arg("--component", choices=["kernel", "glibc", "all"], default="all",
                       help="whose series (default: all: kernel, and glibc when its stage can make a tree)"), JSON))),
         action_dest="patches_action", actions_required=True),
)


def _add(parent: Any, verb: Verb) -> None:
    sub = parent.add_parser(verb.name, help=verb.help, description=verb.description or verb.help,
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False)
    for a in verb.args:
        sub.add_argument(*a.flags, **a.options)
    if verb.func is not None:
        sub.set_defaults(func=verb.func, **verb.defaults)
    if verb.actions:
        actions = sub.add_subparsers(dest=verb.action_dest, required=verb.actions_required,
                                     metavar="ACTION" if verb.actions_required else f"[{verb.actions[0].name}]")
        for action in verb.actions:
            _add(actions, action)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="isobuild", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Build a kernel from a quilt patch series (verifying every requested config option) and "
                    "the distribution's glibc packages with another, Debian, AlmaLinux and Rocky Linux live ISOs "
                    "that carry them for x86_64, arm64 and riscv64, and boot-test them in QEMU (BIOS/UEFI x CD/USB; "
                    "UEFI on the other arches), proving the patched kernel and glibc run and the project's guest "
                    "tests pass inside; and QEMU build VMs of those roots to log into, run commands and tests in "
                    "and copy files to and from (isobuild image, isobuild vm), and Debian source packages built "
                    "natively in fresh VMs of each arch, many at once, distcc optional (isobuild pkg). The default "
                    "job: isobuild all.",
        epilog=EXIT_CODES)
    top.add_argument("--version", action="version", version=f"isobuild {__version__}")
    top.add_argument("-c", "--config", default="isobuild.yaml", metavar="FILE",
                     help="project settings (default: ./isobuild.yaml); paths in it are relative to its directory")
    top.add_argument("-v", "--verbose", action="store_true", help="also show every command run and debug events")
    top.add_argument("--log-format", choices=["console", "json"], default=None,
                     help="stderr event format (default: json when $CI is set, else console); "
                          "logs/isobuild.jsonl always gets JSON")
    verbs = top.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        _add(verbs, verb)
    return top


# --- main ---------------------------------------------------------------------------------------

def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _report(exc: IsobuildError) -> None:
    print(f"isobuild: error: {exc.message}", file=sys.stderr)
    for line in exc.details:
        print(f"  {line}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    json_console = None if args.log_format is None else args.log_format == "json"
    log.setup(verbose=args.verbose, json_console=json_console)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C / kill -INT interrupts even when isobuild was started with SIGINT ignored (a background
    # job of a non-interactive shell, nohup): the build VMs and tools it started are stopped, exit 130
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.verb not in ("doctor", "distclean"):  # distclean removes logs/: it must not open a log there
            try:
                logs = load_project(Path(args.config)).logs_dir
                log.open_jsonl(logs / "isobuild.jsonl")
            except IsobuildError:
                pass  # the verb reports the bad config itself
        return int(args.func(args))
    except IsobuildError as exc:
        log.get().error("isobuild.error", kind=type(exc).__name__, message=exc.message)
        _report(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("isobuild: interrupted; the last good artifacts are kept", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except OSError as exc:
        # the host let us down somewhere no check foresaw: one line naming the file, not a traceback
        where = exc.filename or "?"
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or type(exc).__name__)
        log.get().error("isobuild.error", kind="OSError", message=f"{where}: {what}", traceback=traceback.format_exc())
        print(f"isobuild: error: {where}: {what}", file=sys.stderr)
        print("  hint: free space (isobuild clean)" if exc.errno == errno.ENOSPC
              else "  hint: check that path's permissions and the disk; isobuild -v shows more", file=sys.stderr)
        return int(ExitCode.INFRA)
    except Exception:
        traceback.print_exc()
        return int(ExitCode.INTERNAL)

