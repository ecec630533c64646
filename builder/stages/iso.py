"""The ISO stage: the rootfs artifact laid out live and mastered as a hybrid ISO.

Output, in the project: ``iso/<distro>/<name>.iso``, its ``.sha256`` and a
``.manifest.json`` (every package with its version, the kernel release, the
patch series with sha256s).  All three are staged under temp names and
renamed into place together, so a failure leaves the previous good ISO.
Keyed by the rootfs key and the live layout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder.distros.base import LiveLayout, Plugin
from builder.infra import atomic, keys, state
from builder.infra.digests import DigestCache
from builder.infra.errors import UserError
from builder.stages import rootfs
from builder.tools import iso9660

STAGE_VERSION = 1


@dataclass
class Plan:
    rootfs: rootfs.Plan
    layout: LiveLayout
    out: Path
    inputs: dict[str, Any]
    key: str

    @property
    def state_path(self) -> Path:
        return self.rootfs.layout.state_dir / "iso.json"

    @property
    def sha_path(self) -> Path:
        return self.out.with_name(self.out.name + ".sha256")

    @property
    def manifest_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".manifest.json")


def check_layout(plugin: Plugin) -> None:
    """The live layout's label and boot paths, checked when the distro is (before any build)."""
    layout = plugin.layout()
    iso9660.validate_label(layout.label)
    for what, rel in (("kernel", layout.kernel), ("initrd", layout.initrd), ("squashfs", layout.squashfs)):
        iso9660.validate_boot_path(what, rel)


def plan(rp: rootfs.Plan) -> Plan:
    plugin = rp.plugin
    layout = plugin.layout()
    iso9660.validate_label(layout.label)
    name = getattr(plugin.settings, "name", plugin.name)
    out = plugin.project.root / "iso" / plugin.name / f"{name}.iso"
    inputs = {"stage": "iso", "stage_version": STAGE_VERSION, "rootfs": rp.key, "layout": asdict(layout)}
    return Plan(rp, layout, out, inputs, keys.compute(inputs))


def built(p: Plan) -> dict[str, Any] | None:
    """The stage record if the ISO on disk is this plan's (by key and by content)."""
    record = state.load(p.state_path)
    if not record or record.get("status") != "ok" or record.get("key") != p.key or not p.out.exists():
        return None
    digests = DigestCache(p.rootfs.plugin.project.work_dir / "digests.json")
    same = digests.sha256(p.out) == record.get("sha256")
    digests.save()
    return record if same else None


def build(p: Plan, log_path: Path) -> dict[str, Any]:
    meta = rootfs.built(p.rootfs)
    if meta is None:
        raise UserError(f"the {p.rootfs.plugin.name} root filesystem is missing or stale",
                        hint=f"run: isobuild {p.rootfs.plugin.name}")
    kernel_meta = state.load(p.rootfs.kernel.artifact / "metadata.json") or {}
    work = p.rootfs.layout.root / "iso-work"
    record: dict[str, Any] = {"stage": "iso", "distro": p.rootfs.plugin.name, "key": p.key, "log": str(log_path),
                              "inputs": p.inputs}
    staged: list[tuple[Path, Path]] = []
    start = time.monotonic()
    with state.recorded(p.state_path, record) as done:
        try:
            shutil.rmtree(work, ignore_errors=True)
            tree = work / "tree"
            for src, rel in (("vmlinuz", p.layout.kernel), ("initrd.img", p.layout.initrd),
                             ("filesystem.squashfs", p.layout.squashfs)):
                target = tree / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(p.rootfs.artifact / src, target)  # same filesystem: no 100 MB copy
            spec = iso9660.BootSpec(p.layout.label, p.layout.kernel, p.layout.initrd, p.layout.cmdline,
                                f"isobuild {p.rootfs.plugin.name} live ({meta['kernel_release']})")
            iso_tmp = atomic.temp_path(p.out, "staged")
            iso9660.master(tree, iso_tmp, spec, work, log_path, int(meta["epoch"]))
            staged.append((iso_tmp, p.out))
            sha = DigestCache(p.rootfs.plugin.project.work_dir / "digests.json")
            digest = sha.sha256(iso_tmp)
            manifest = {
                "distro": p.rootfs.plugin.name, "iso": p.out.name, "sha256": digest, "size": iso_tmp.stat().st_size,
                "label": p.layout.label, "cmdline": p.layout.cmdline, "kernel_release": meta["kernel_release"],
                "kernel_key": meta["kernel_key"], "rootfs_key": p.rootfs.key, "iso_key": p.key,
                "patches": kernel_meta.get("patches", []), "glibc": meta.get("glibc"), "packages": meta["packages"],
            }
            for final, text in ((p.sha_path, f"{digest}  {p.out.name}\n"),
                                (p.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")):
                tmp = atomic.temp_path(final, "staged")
                atomic.write_text(tmp, text)
                staged.append((tmp, final))
            for tmp, final in staged:  # the ISO first: a reader never sees a new sum for an old ISO for long
                os.replace(tmp, final)
            staged.clear()
            shutil.rmtree(work, ignore_errors=True)
            sha.remember(p.out, digest)  # os.replace kept inode and mtime: no need to read 100 MB again
            sha.save()
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        done.update(sha256=digest, size=manifest["size"], iso=str(p.out), kernel_release=meta["kernel_release"],
                    glibc=meta.get("glibc"),
                    seconds=round(time.monotonic() - start, 3))
    return state.load(p.state_path) or dict(record, **done, status="ok")
