"""The kernel's packages, one kind at a time, made on demand from the compiled kernel's artifact.

A Debian ISO takes ``deb-image`` (linux-image), guest tests and glibc builds ``deb-libc-dev``
(linux-libc-dev), an EL ISO ``rpm`` (its kernel RPM), the guest tests of an EL image ``rpm-headers``
(kernel-headers, for their build root only).  Each kind is its own keyed artifact --
the kernel's key, the kind and the packager's version -- built from the kernel artifact (no make,
no build tree needed, so a kind first asked for later is made then, and never twice) by
builder.tools.kpkg.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.infra import atomic, hosttools, keys, log, schema, state
from builder.infra.arch import ARCHES
from builder.infra.digests import sha256_file
from builder.infra.errors import UserError
from builder.stages.base import PlannedStage
from builder.stages.kernel import KernelStage
from builder.tools import kconfig, kpkg

PACKAGER_VERSION = 1
Kind = Literal["deb-image", "deb-libc-dev", "rpm", "rpm-headers"]
KINDS: tuple[Kind, ...] = ("deb-image", "deb-libc-dev", "rpm", "rpm-headers")


def parse_kinds(text: str) -> list[Kind]:
    """``deb-image,rpm`` -> the kinds, in order, once each; an unknown one is refused naming the known."""
    names = schema.choices(text, KINDS, "kernel package kind(s)")
    return [k for k in KINDS if k in names]


@dataclass
class Plan:
    kind: Kind
    inputs: dict[str, Any]
    key: str
    artifact: Path


class KernelPackageStage(PlannedStage):
    kind = "kernel-package"

    def __init__(self, kernel: KernelStage, what: Kind):
        super().__init__(kernel.project, f"{kernel.instance}.{what}", kernel.arch)
        self.kernel = kernel
        self.what = what

    def make_plan(self) -> Plan:
        hosttools.require(["rpmbuild"] if self.what.startswith("rpm") else ["dpkg-deb"],
                          f"the kernel's {self.what} package")
        inputs = {"stage": self.kind, "packager": PACKAGER_VERSION, "kernel": self.kernel.key, "kind": self.what}
        key = keys.compute(inputs)
        return Plan(self.what, inputs, key, self.project.work_dir / "kernel" / "packages" / key)

    def artifact_for(self, key: str) -> Path:
        return self.project.work_dir / "kernel" / "packages" / key

    def upstream(self) -> dict[str, Any]:
        return {"kernel": self.kernel}

    def changes(self) -> list[str]:
        """A package changes only with its kernel: say what changed there ("patches: X changed")."""
        return self.kernel.changes() or super().changes()

    def files(self) -> list[Path]:
        """The package files of this key (built)."""
        meta = self.built() or {}
        return [self.artifact / str(f["file"]) for f in meta.get("packages", [])]

    def build(self, log_path: Path) -> dict[str, Any]:
        meta = self.kernel.built()
        if meta is None:
            raise UserError(f"kernel for profile {self.kernel.instance} ({self.arch}) is missing or stale",
                            hint=f"run: isobuild kernel --profile {self.kernel.instance}")
        release = str(meta["kernel_release"])
        epoch = int(meta["make_env"]["SOURCE_DATE_EPOCH"])
        arch = ARCHES[self.arch]
        started = state.now()
        scratch = atomic.temp_path(self.artifact.with_name(f"{self.key[:16]}-work"))
        try:
            with log.stage("kernel-package.make", kind=self.what), atomic.new_dir(self.artifact) as out:
                if self.what == "deb-image":
                    initrd = kconfig.read_config(self.kernel.artifact / "config").get("CONFIG_BLK_DEV_INITRD") == "y"
                    made = kpkg.deb_image(self.kernel.artifact, release, f"{release}-1", arch, out, scratch, epoch,
                                          log_path, initrd=initrd)
                elif self.what == "deb-libc-dev":
                    made = kpkg.deb_libc_dev(self.kernel.artifact, f"{release}-1", arch, out, scratch, epoch, log_path)
                elif self.what == "rpm-headers":
                    made = kpkg.rpm_headers(self.kernel.artifact, release, arch, out, scratch, epoch, log_path)
                else:
                    made = kpkg.rpm_kernel(self.kernel.artifact, release, arch, out, scratch, epoch, log_path)
                metadata = {"stage": self.kind, "key": self.key, "inputs": self.inputs, "kind": self.what,
                            "kernel_release": release, "kernel_key": self.kernel.key,
                            "packages": [{"file": made.name, "sha256": sha256_file(made), "size": made.stat().st_size}],
                            "started": started, "finished": state.now(), "log": str(log_path)}
                atomic.write_json(out / "metadata.json", metadata)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return metadata

    def summary(self, meta: dict[str, Any]) -> tuple[int | None, str, str]:
        packages = meta.get("packages", [])
        return (sum(p.get("size", 0) for p in packages), str(packages[0]["sha256"]) if packages else "",
                ", ".join(str(p["file"]) for p in packages))

    @classmethod
    def clean_targets(cls, work_dir: Path, keep: set[str]) -> list[Path]:
        return [p for p in (work_dir / "kernel" / "packages").glob("*") if p.name not in keep]
