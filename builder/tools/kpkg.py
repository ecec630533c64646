"""Kernel packages made from a compiled kernel's artifact, without make.

``make bindeb-pkg`` re-runs make over the whole tree, then builds the image, the headers and the
libc-dev packages every time; ``binrpm-pkg`` does the same again for RPMs.  A Debian ISO installs
the image package alone.  Here each package is made from what the kernel stage already collected
(the image, System.map, config, the installed modules, the uapi headers), one kind at a time, with
the file layout, control fields and maintainer scripts of the kernel's own
``scripts/package/builddeb`` and ``mkspec`` (6.1): no make traversal, no headers package nobody
installs (``kernel-headers`` is made only for EL build roots, see ``rpm_headers``).  Every file
time is the build's SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from builder.infra import runner
from builder.infra.arch import Arch
from builder.infra.errors import UserError

# builddeb's maintainer scripts: run the hooks initramfs-tools and the boot loaders install
_SCRIPT = """#!/bin/sh

set -e

# Pass maintainer script parameters to hook scripts
export DEB_MAINT_PARAMS="$*"

# Tell initramfs builder whether it's wanted
export INITRD={initrd}

test -d /etc/kernel/{name}.d && run-parts --arg="{release}" --arg="/boot/vmlinuz-{release}" /etc/kernel/{name}.d
exit 0
"""


def _stamp(tree: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def _md5sums(tree: Path) -> str:
    lines = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
                       and p.relative_to(tree).parts[0] != "DEBIAN"):
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(tree).as_posix()}\n")
    return "".join(lines)


def _installed_kib(tree: Path) -> int:
    return sum((p.stat().st_size + 1023) // 1024 for p in tree.rglob("*")
               if p.is_file() and p.relative_to(tree).parts[0] != "DEBIAN")


def _build_deb(tree: Path, control: dict[str, str], out_dir: Path, epoch: int, log_path: Path) -> Path:
    debian = tree / "DEBIAN"
    debian.mkdir(mode=0o755, exist_ok=True)
    control["Installed-Size"] = str(_installed_kib(tree))
    (debian / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    (debian / "md5sums").write_text(_md5sums(tree))
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o022 | (0o755 if path.is_dir() else 0))
    _stamp(tree, epoch)
    name = f"{control['Package']}_{control['Version']}_{control['Architecture']}.deb"
    out = out_dir / name
    runner.run(["dpkg-deb", "--root-owner-group", "-Zzstd", "-z3", "--build", str(tree), str(out)],
               log_path=log_path, env={"SOURCE_DATE_EPOCH": str(epoch)})
    return out


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def deb_image(kernel: Path, release: str, version: str, arch: Arch, out_dir: Path, scratch: Path, epoch: int,
              log_path: Path, initrd: bool = True) -> Path:
    """linux-image-<release>: the image, System.map, config and modules of the kernel artifact."""
    tree = _fresh(scratch / "linux-image")
    image = kernel / Path(arch.image).name
    if not image.is_file():
        raise UserError(f"{kernel}: no {image.name} in the kernel artifact", hint="rebuild it: isobuild kernel --force")
    (tree / "boot").mkdir()
    shutil.copyfile(image, tree / "boot" / f"vmlinuz-{release}")
    shutil.copyfile(kernel / "System.map", tree / "boot" / f"System.map-{release}")
    shutil.copyfile(kernel / "config", tree / "boot" / f"config-{release}")
    modules = kernel / "modules" / "lib" / "modules" / release
    if modules.is_dir():
        shutil.copytree(modules, tree / "lib" / "modules" / release, symlinks=True)
        for link in ("build", "source"):
            (tree / "lib" / "modules" / release / link).unlink(missing_ok=True)
    debian = tree / "DEBIAN"
    debian.mkdir(mode=0o755)
    for name in ("postinst", "postrm", "preinst", "prerm"):
        (tree / "etc" / "kernel" / f"{name}.d").mkdir(parents=True)
        script = debian / name
        script.write_text(_SCRIPT.format(initrd="Yes" if initrd else "No", name=name, release=release))
        script.chmod(0o755)
    control = {"Package": f"linux-image-{release}", "Source": "linux-upstream", "Version": version,
               "Architecture": arch.deb_arch, "Maintainer": "isobuild <isobuild@localhost>", "Section": "kernel",
               "Priority": "optional",
               "Description": f"Linux kernel, version {release}\n This package contains the Linux kernel, modules "
                              f"and corresponding other\n files, version: {release}."}
    return _build_deb(tree, control, out_dir, epoch, log_path)


def deb_libc_dev(kernel: Path, version: str, arch: Arch, out_dir: Path, scratch: Path, epoch: int,
                 log_path: Path) -> Path:
    """linux-libc-dev: the kernel's uapi headers (make headers_install, collected with the kernel),
    asm/ under the arch's multiarch directory as Debian has it."""
    uapi = kernel / "uapi" / "include"
    if not uapi.is_dir():
        raise UserError(f"{kernel}: no uapi headers in the kernel artifact (made before they were collected)",
                        hint="rebuild it: isobuild kernel --force")
    tree = _fresh(scratch / "linux-libc-dev")
    shutil.copytree(uapi, tree / "usr" / "include", symlinks=True)
    multiarch = tree / "usr" / "include" / arch.triplet
    multiarch.mkdir()
    os.replace(tree / "usr" / "include" / "asm", multiarch / "asm")
    control = {"Package": "linux-libc-dev", "Source": "linux-upstream", "Version": version,
               "Architecture": arch.deb_arch, "Maintainer": "isobuild <isobuild@localhost>", "Section": "devel",
               "Priority": "optional", "Multi-Arch": "same", "Provides": "linux-kernel-headers",
               "Description": "Linux support headers for userspace development\n This package provides userspaces "
                              "headers from the Linux kernel.  These headers\n are used by the installed headers "
                              "for GNU glibc and other system\n libraries."}
    return _build_deb(tree, control, out_dir, epoch, log_path)


def _rpm_work(scratch: Path, name: str, epoch: int) -> tuple[Path, Path, Path]:
    """(work dir, HOME with the macros, rpmbuild's topdir) for one RPM made at ``epoch``."""
    work = _fresh(scratch / name)
    home, top = work / "home", work / "rpmbuild"
    home.mkdir()
    (home / ".rpmmacros").write_text(f"%_topdir {top}\n%_buildhost isobuild\n%use_source_date_epoch_as_buildtime 1\n"
                                     "%clamp_mtime_to_source_date_epoch 1\n%_binary_payload w9.zstdio\n"
                                     f"%_tmppath {work / 'tmp'}\n")
    (work / "tmp").mkdir()
    return work, home, top


def _rpmbuild(spec: Path, name: str, arch: Arch, home: Path, top: Path, out_dir: Path, epoch: int,
              log_path: Path) -> Path:
    runner.run(["rpmbuild", "--target", f"{arch.rpm_arch}-linux", "-bb", str(spec)], log_path=log_path,
               env={"HOME": str(home), "SOURCE_DATE_EPOCH": str(epoch)})
    built = sorted(top.glob(f"RPMS/*/{name}-[0-9]*.rpm"))
    if len(built) != 1:
        raise UserError(f"rpmbuild made {len(built)} {name} RPMs, not one", hint=f"see {log_path}")
    out = out_dir / built[0].name
    shutil.copyfile(built[0], out)
    return out


def rpm_headers(kernel: Path, release: str, arch: Arch, out_dir: Path, scratch: Path, epoch: int,
                log_path: Path) -> Path:
    """kernel-headers-<release with _ for ->: the kernel's uapi headers under /usr/include as EL's
    kernel-headers has them (asm/ directly there).  For build roots (the guest tests compile against
    it), never for an image: it would replace the distribution's in a root users keep."""
    uapi = kernel / "uapi" / "include"
    if not uapi.is_dir():
        raise UserError(f"{kernel}: no uapi headers in the kernel artifact (made before they were collected)",
                        hint="rebuild it: isobuild kernel --force")
    work, home, top = _rpm_work(scratch, "rpm-headers", epoch)
    spec = work / "kernel-headers.spec"
    spec.write_text(f"""Name: kernel-headers
Summary: Header files for the Linux kernel for use by glibc
Version: {release.replace("-", "_")}
Release: 1
License: GPL
Group: Development/System
Vendor: The Linux Community
URL: https://www.kernel.org
Provides: kernel-headers = %{{version}}
%define __spec_install_post /usr/lib/rpm/brp-compress || :
%define debug_package %{{nil}}

%description
Kernel-headers includes the C header files that specify the interface
between the Linux kernel and userspace libraries and programs.

%install
mkdir -p %{{buildroot}}/usr
cp -a {uapi} %{{buildroot}}/usr/include

%files
%defattr (-, root, root)
/usr/include
""")
    return _rpmbuild(spec, "kernel-headers", arch, home, top, out_dir, epoch, log_path)


def rpm_kernel(kernel: Path, release: str, arch: Arch, out_dir: Path, scratch: Path, epoch: int,
               log_path: Path) -> Path:
    """kernel-<release with _ for ->: what binrpm-pkg's main package holds (never its kernel-headers,
    which would obsolete the distribution's), with mkspec's scripts."""
    version = release.replace("-", "_")
    work, home, top = _rpm_work(scratch, "rpm", epoch)
    modules = kernel / "modules" / "lib" / "modules" / release
    spec = work / "kernel.spec"
    spec.write_text(f"""Name: kernel
Summary: The Linux Kernel
Version: {version}
Release: 1
License: GPL
Group: System Environment/Kernel
Vendor: The Linux Community
URL: https://www.kernel.org
Provides: kernel-{release}
%define __spec_install_post /usr/lib/rpm/brp-compress || :
%define debug_package %{{nil}}
%define _build_id_links none

%description
The Linux Kernel, the operating system core itself

%install
mkdir -p %{{buildroot}}/boot
cp {kernel / Path(arch.image).name} %{{buildroot}}/boot/vmlinuz-{release}
cp {kernel / "System.map"} %{{buildroot}}/boot/System.map-{release}
cp {kernel / "config"} %{{buildroot}}/boot/config-{release}
{f"mkdir -p %{{buildroot}}/lib/modules && cp -a {modules} %{{buildroot}}/lib/modules/" if modules.is_dir() else ""}
rm -f %{{buildroot}}/lib/modules/{release}/build %{{buildroot}}/lib/modules/{release}/source

%post
if [ -x /sbin/installkernel -a -r /boot/vmlinuz-{release} -a -r /boot/System.map-{release} ]; then
cp /boot/vmlinuz-{release} /boot/.vmlinuz-{release}-rpm
cp /boot/System.map-{release} /boot/.System.map-{release}-rpm
rm -f /boot/vmlinuz-{release} /boot/System.map-{release}
/sbin/installkernel {release} /boot/.vmlinuz-{release}-rpm /boot/.System.map-{release}-rpm
rm -f /boot/.vmlinuz-{release}-rpm /boot/.System.map-{release}-rpm
fi

%preun
if [ -x /sbin/new-kernel-pkg ]; then
new-kernel-pkg --remove {release} --rminitrd --initrdfile=/boot/initramfs-{release}.img
elif [ -x /usr/bin/kernel-install ]; then
kernel-install remove {release}
fi

%files
%defattr (-, root, root)
/boot/*
{f"/lib/modules/{release}" if modules.is_dir() else ""}
""")
    return _rpmbuild(spec, "kernel", arch, home, top, out_dir, epoch, log_path)
