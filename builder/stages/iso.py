"""The ISO stage: the rootfs artifact laid out live and mastered as a hybrid ISO.

Output, in the project: ``iso/<distro>/<name>.iso``, its ``.sha256`` and a
``.manifest.json`` (every package with its version, the kernel release, the
patch series with sha256s).  All three are staged under temp names and
renamed into place together, so a failure leaves the previous good ISO.
Keyed by the rootfs key and the live layout.  The ISO lives in the project,
so what describes it is the project's record of the stage (not an artifact
under the work dir): built means the record has this key and the file on
disk still has the sha256 the record says.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from builder.infra import atomic, state
from builder.infra.errors import UserError
from builder.stages.base import Row, Stage, record_row
from builder.stages.rootfs import RootfsStage
from builder.tools import iso9660

STAGE_VERSION = 1


@dataclass(frozen=True)
class LiveLayout:
    """Where the live system's pieces go on the ISO and how it boots."""

    kernel: str  # path inside the ISO, e.g. live/vmlinuz
    initrd: str
    squashfs: str
    cmdline: str
    label: str


class LivePlugin(Protocol):
    """What the ISO stage takes of a distro plugin (builder.distros.base.Plugin is one)."""

    name: str
    settings: Any

    def layout(self) -> LiveLayout: ...


def check_layout(plugin: LivePlugin) -> None:
    """The live layout's label and boot paths, checked when the distro is (before any build)."""
    layout = plugin.layout()
    iso9660.validate_label(layout.label)
    for what, rel in (("kernel", layout.kernel), ("initrd", layout.initrd), ("squashfs", layout.squashfs)):
        iso9660.validate_boot_path(what, rel)


class IsoStage(Stage):
    kind = "iso"

    def __init__(self, rootfs: RootfsStage, plugin: LivePlugin):
        super().__init__(rootfs.project, rootfs.instance, rootfs.arch)
        self.rootfs = rootfs
        self.plugin = plugin
        self.layout = plugin.layout()
        name = getattr(plugin.settings, "name", plugin.name)
        # the first arch's ISO keeps the plain name (as before there were others)
        self.out = self.project.iso_dir / plugin.name / (f"{name}.iso" if self.arch == "x86_64"
                                                          else f"{name}-{self.arch}.iso")

    @property
    def inputs(self) -> dict[str, Any]:
        return {"stage": "iso", "stage_version": STAGE_VERSION, "rootfs": self.rootfs.key,
                "layout": asdict(self.layout)}

    @property
    def artifact(self) -> Path:
        return self.out

    def artifact_for(self, key: str) -> Path:
        return self.out

    @property
    def sha_path(self) -> Path:
        return self.out.with_name(self.out.name + ".sha256")

    @property
    def manifest_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".manifest.json")

    @property
    def legacy_record(self) -> str | None:
        return f"distros/{self.instance}/state/iso.json" if self.arch == "x86_64" else None

    def check(self) -> None:
        check_layout(self.plugin)

    def upstream(self) -> dict[str, Stage]:
        return {"rootfs": self.rootfs}

    def last_inputs(self) -> dict[str, Any] | None:
        record = self.last()
        return record.get("inputs") if record.get("status") == "ok" else None

    def built(self) -> dict[str, Any] | None:
        """This project's record if the ISO on disk is this key's (by key and by content)."""
        record = self.last()
        if record.get("status") != "ok" or record.get("key") != self.key or not self.out.exists():
            return None
        digests = self.project.digests()
        same = digests.sha256(self.out) == record.get("sha256")
        digests.save()
        return record if same else None

    def adopt(self) -> bool:
        return False  # built() is this project's own record already

    def link_current(self) -> None:
        return None  # the ISO is in the project's iso/ already

    def build(self, log_path: Path) -> dict[str, Any]:
        return build(self, log_path)

    def record_extras(self, meta: dict[str, Any]) -> dict[str, Any]:
        return meta

    def row(self) -> Row:
        record = self.last()
        row = Row("iso", self.instance, "missing", key=self.key[:12], arch=self.arch)
        done = self.built()
        if done is not None:
            row.state, row.when = "built", str(done.get("finished", ""))
            row.size, row.sha256 = done.get("size"), str(done.get("sha256", ""))[:12]
            row.seconds, row.detail, row.artifact = done.get("seconds"), str(self.out), str(self.out)
        elif record.get("status") == "ok" and record.get("key") == self.key:
            row.state, row.detail = "stale", f"{self.out} was changed or removed since it was built"
        else:
            record_row(row, record, self.key, self.last_inputs(), self.inputs)
            if row.state == "stale":
                row.detail = "; ".join(self.changes()) or row.detail
        return row


def build(stage: IsoStage, log_path: Path) -> dict[str, Any]:
    rootfs, layout, out = stage.rootfs, stage.layout, stage.out
    meta = rootfs.built()
    if meta is None:
        raise UserError(f"the {rootfs.instance} root filesystem is missing or stale",
                        hint=f"run: isobuild {rootfs.instance}")
    kernel_meta = rootfs.kernel.kernel.built() or {}  # the compiled kernel (rootfs.kernel is its package)
    # scratch of this run (named with its pid: a killed run's is swept by the next)
    work = atomic.temp_path(rootfs.project.work_dir / "distros" / rootfs.instance / "iso-work")
    staged: list[tuple[Path, Path]] = []
    start = time.monotonic()
    try:
        shutil.rmtree(work, ignore_errors=True)
        tree = work / "tree"
        for src, rel in (("vmlinuz", layout.kernel), ("initrd.img", layout.initrd),
                         ("filesystem.squashfs", layout.squashfs)):
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(rootfs.artifact / src, target)  # same filesystem: no 100 MB copy
        grub = rootfs.artifact / "grub"  # a foreign arch's GRUB modules, from its root (rootfs.copy_grub_modules)
        spec = iso9660.BootSpec(layout.label, layout.kernel, layout.initrd, layout.cmdline,
                                f"isobuild {rootfs.instance} live ({meta['kernel_release']})",
                                arch=stage.arch, grub_dir=grub if grub.is_dir() else None)
        iso_tmp = atomic.temp_path(out, "staged")
        iso9660.master(tree, iso_tmp, spec, work, log_path, int(meta["epoch"]))
        staged.append((iso_tmp, out))
        sha = stage.project.digests()
        digest = sha.sha256(iso_tmp)
        manifest = {
            "distro": rootfs.instance, "arch": stage.arch, "iso": out.name, "sha256": digest,
            "size": iso_tmp.stat().st_size, "label": layout.label, "cmdline": layout.cmdline,
            "kernel_release": meta["kernel_release"], "kernel_key": meta["kernel_key"], "rootfs_key": rootfs.key,
            "iso_key": stage.key, "patches": kernel_meta.get("patches", []), "glibc": meta.get("glibc"),
            "packages": meta["packages"],
        }
        for final, text in ((stage.sha_path, f"{digest}  {out.name}\n"),
                            (stage.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")):
            tmp = atomic.temp_path(final, "staged")
            atomic.write_text(tmp, text)
            staged.append((tmp, final))
        for tmp, final in staged:  # the ISO first: a reader never sees a new sum for an old ISO for long
            os.replace(tmp, final)
        staged.clear()
        sha.remember(out, digest)  # os.replace kept inode and mtime: no need to read 100 MB again
        sha.save()
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"sha256": digest, "size": manifest["size"], "iso": str(out), "kernel_release": meta["kernel_release"],
            "glibc": meta.get("glibc"), "seconds": round(time.monotonic() - start, 3), "finished": state.now()}
