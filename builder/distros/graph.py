"""Which stages there are, wired together: the one place that knows what feeds what.

A project has a kernel per profile and arch; the Debian-family distros take the glibc stage's
.debs, an EL distro its own glibc-rpm stage (the plugin's ``glibc_format`` says which); each distro
has a rootfs over its kernel and glibc, an ISO over its rootfs and a boot check per mode over its
ISO.  ``Graph`` builds those stage objects once each (two distros share one kernel stage object),
for verbs (``pipeline``) and for ``status``/``report`` alike.  Stage modules know nothing of each
other beyond their inputs; this module knows nothing of how any of them builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder import distros
from builder.distros.base import Plugin
from builder.infra.config import Project
from builder.infra.errors import IsobuildError
from builder.stages.base import Row, Stage
from builder.stages.glibc import GlibcStage
from builder.stages.glibcrpm import GlibcRpmStage
from builder.stages.guesttests import GuestTestsStage
from builder.stages.image import ImageStage, key_dir
from builder.stages.iso import IsoStage
from builder.stages.kernel import KernelStage
from builder.stages.kernelboot import KernelBootCheck
from builder.stages.kpackage import KernelPackageStage, Kind
from builder.stages.rootfs import RootfsStage
from builder.stages.smoke import SmokeCheck, checks
from builder.tools import ssh


def wants_glibc(project: Project, plugin: Plugin) -> bool:
    """The patched glibc goes into this distro's root: enabled (isobuild.yaml and the distro file),
    and the plugin installs a format a glibc stage makes (deb: the glibc stage; rpm: glibc-rpm)."""
    return project.settings.glibc.enabled and plugin.takes_glibc()


@dataclass
class DistroStages:
    plugin: Plugin
    kernel: KernelStage
    kernel_package: KernelPackageStage  # the kernel's package this distro installs
    glibc: Stage | None
    rootfs: RootfsStage
    iso: IsoStage
    guest_tests: GuestTestsStage | None = None  # the project's tests, built for this image

    def smoke(self) -> list[SmokeCheck]:
        return checks(self.iso)


class Graph:
    def __init__(self, project: Project, profile: str | None = None, arch: str | None = None):
        self.project = project.with_arch(arch)  # every stage and plugin of the graph plans for this arch
        self.profile = profile or project.settings.kernel.profile
        self.arch = self.project.settings.arch
        self._kernels: dict[tuple[str, str], KernelStage] = {}
        self._glibc: dict[str, Stage] = {}
        self._packages: dict[tuple[str, str, str], KernelPackageStage] = {}

    def kernel(self, profile: str | None = None) -> KernelStage:
        key = (profile or self.profile, self.arch)
        if key not in self._kernels:
            self._kernels[key] = KernelStage(self.project, key[0], key[1])
        return self._kernels[key]

    def kernel_package(self, what: Kind, profile: str | None = None) -> KernelPackageStage:
        """One kind of the kernel's packages (two distros installing the same kind share it)."""
        kernel = self.kernel(profile)
        key = (kernel.instance, kernel.arch, what)
        if key not in self._packages:
            self._packages[key] = KernelPackageStage(kernel, what)
        return self._packages[key]

    def debian_glibc(self, plugin: Plugin | None = None) -> GlibcStage:
        """The glibc .debs for a Debian-family distro's suite (by default, the first distro configured
        for this arch; none: the host's own glibc source, native builds only)."""
        if plugin is None:
            plugin = self.glibc_distro()
        target = plugin.glibc_target() if plugin is not None else None
        key = f"deb:{target.suite}:{target.mirror}" if target else "deb"
        if key not in self._glibc:
            self._glibc[key] = GlibcStage(self.project, self.arch, target)
        return self._glibc[key]  # type: ignore[return-value]

    def glibc_distro(self) -> Plugin | None:
        """The first Debian-family distro (by name) whose settings list this arch."""
        for name in distros.names(self.project):
            try:
                plugin = distros.load(self.project, name)
            except IsobuildError:
                continue
            if plugin.glibc_format == "deb" and self.arch in plugin.arches():
                return plugin
        return None

    def load(self, name: str) -> Plugin:
        """Distro ``name``'s plugin for this graph's arch."""
        return distros.load(self.project, name)

    def glibc_for(self, plugin: Plugin) -> Stage | None:
        """The stage whose packages this distro's root takes (None: the distribution's own glibc)."""
        if not wants_glibc(self.project, plugin):
            return None
        if plugin.glibc_format == "deb":
            return self.debian_glibc(plugin)
        if plugin.name not in self._glibc:
            self._glibc[plugin.name] = GlibcRpmStage(plugin, self.arch)  # type: ignore[arg-type]
        return self._glibc[plugin.name]

    def distro(self, plugin: Plugin) -> DistroStages:
        kernel = self.kernel()
        package = self.kernel_package(plugin.kernel_package)
        glibc = self.glibc_for(plugin)
        rootfs = RootfsStage(plugin, package, glibc)
        return DistroStages(plugin, kernel, package, glibc, rootfs, IsoStage(rootfs, plugin),
                            self.guest_tests(plugin, glibc))

    def image(self, plugin: Plugin) -> tuple[DistroStages, ImageStage]:
        """A distro's build-VM disk image and the stages under it: the distro's VM variant
        (``Plugin.for_vm``: vm.packages added) over the same kernel package and glibc as its ISO,
        then the project's SSH key let in by the image stage.  Before the key exists (``isobuild
        image`` makes it) the image's check says so."""
        stages = self.distro(plugin.for_vm(self.project.settings.vm.packages))
        return stages, ImageStage(stages.rootfs, plugin.name, ssh.public_key(key_dir(self.project)))

    def guest_tests(self, plugin: Plugin, glibc: Stage | None) -> GuestTestsStage | None:
        """The project's guest tests for this distro's image (built in its plugin's build root against
        the kernel's uapi headers package and our glibc), when smoke.guest_tests names a directory
        that exists."""
        where = self.project.settings.smoke.guest_tests
        if not where or not (self.project.root / where).is_dir():
            return None
        return GuestTestsStage(plugin, self.kernel_package(plugin.tests_headers), glibc)


def _blocked(kind: str, name: str, exc: IsobuildError, arch: str) -> Row:
    return Row(kind, name, "blocked", detail=exc.message + (f"; {exc.hint}" if exc.hint else ""), arch=arch)


def _row(item: Any, kind: str, name: str, arch: str) -> Row:
    try:
        return item.row()  # type: ignore[no-any-return]
    except IsobuildError as exc:
        return _blocked(kind, name, exc, arch)


def _row_of(make: Any, kind: str, name: str, arch: str) -> Row:
    """The row of a stage whose making may itself fail (a glibc stage planning another suite's
    source needs its mirror)."""
    try:
        return _row(make(), kind, name, arch)
    except IsobuildError as exc:
        return _blocked(kind, name, exc, arch)


def kernel_profiles(project: Project, recorded: list[str]) -> list[str]:
    """The configured profile first, then every other profile this project has a record of and
    whose file still exists."""
    configured = project.settings.kernel.profile
    names = [p for p in recorded if (project.root / "profiles" / "kernel" / f"{p}.yaml").exists()]
    return [configured, *sorted(n for n in set(names) if n != configured)]


def rows(project: Project, profile: str | None, recorded_profiles: list[str], arch: str | None = None) -> list[Row]:
    """Every stage's and check's status row for one arch, in pipeline order (status, the report):
    the kernels, then the distros whose settings list the arch, with the glibc their suite takes."""
    configured = project.settings.arch
    graph = Graph(project, profile, arch)
    project = graph.project
    out: list[Row] = []
    for name in kernel_profiles(project, recorded_profiles):
        stage = graph.kernel(name)
        out.append(_row(stage, "kernel", name, graph.arch))
        out.append(_row(KernelBootCheck(stage), "kernel-boot", name, graph.arch))
    plugins: list[Plugin] = []
    packages: set[str] = set()
    loaded: dict[str, IsobuildError] = {}
    for name in distros.names(project):
        try:
            plugins.append(distros.load(project, name))
        except IsobuildError as exc:
            loaded[name] = exc
    plugins = [p for p in plugins if graph.arch in p.arches()]  # the distros configured for this arch
    debian_family = next((p for p in plugins if p.glibc_format == "deb"), None)
    if project.settings.glibc.enabled and (debian_family is not None or graph.arch == configured):
        out.append(_row_of(lambda: graph.debian_glibc(debian_family), "glibc", "glibc", graph.arch))
    for name in distros.names(project):
        if name not in loaded and not any(p.name == name for p in plugins):
            continue
        if name in loaded:
            out.append(_blocked("rootfs", name, loaded[name], graph.arch))
            continue
        plugin = next(p for p in plugins if p.name == name)
        try:
            stages = graph.distro(plugin)
        except IsobuildError as exc:
            out.append(_blocked("rootfs", name, exc, graph.arch))
            continue
        if stages.kernel_package.label not in packages:  # one row per package kind, before its first distro
            packages.add(stages.kernel_package.label)
            out.append(_row(stages.kernel_package, "kernel-package", stages.kernel_package.instance, graph.arch))
        if stages.glibc is not None and stages.glibc.kind != "glibc":
            out.append(_row(stages.glibc, stages.glibc.kind, name, graph.arch))
        if stages.guest_tests is not None:  # built before the root: a test that does not compile stops there
            out.append(_row(stages.guest_tests, "guest-tests", name, graph.arch))
        out.append(_row(stages.rootfs, "rootfs", name, graph.arch))
        out.append(_row(stages.iso, "iso", name, graph.arch))
        out += [_row(check, "smoke", check.name, graph.arch) for check in stages.smoke()]
        out += image_rows(graph, plugin)
    return out


def image_rows(graph: Graph, plugin: Plugin) -> list[Row]:
    """The build-VM image's rows (its root, then the disk), once this project has built one for
    the distro and arch: a project that never asked for VMs sees no such rows."""
    try:
        stages, image = graph.image(plugin)
    except IsobuildError:
        return []
    if not image.record_path.exists():
        return []
    return [_row(stages.rootfs, "rootfs", stages.plugin.name, graph.arch),
            _row(image, "image", plugin.name, graph.arch)]
