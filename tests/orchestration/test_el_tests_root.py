"""The guest tests' build root on EL, with the real rpmbuild, createrepo_c and dnf: the kernel's
kernel-headers RPM made from a kernel artifact, and a dnf root in which it (and our glibc) win over the
distribution's packages of the same names.

EL's repositories are unreachable here, so "the distribution" is a repository built here of stand-ins:
a static busybox as /bin/sh, kernel-headers 5.14 and glibc-devel 2.34 of its own, and a ``gcc`` whose
compiler is a shell script (it checks that the headers a test includes are in the root and writes a
program that prints what it found).  The compile itself is real only on an EL host; what is real here
is every step around it: the packages, the repositories and their priorities, dnf's resolution, the
commands run in the root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.infra.arch import ARCHES
from builder.infra.errors import UserError
from builder.tools import dnf, kpkg

RELEASE = "6.1.192-isobuild"
EPOCH = 1700000000

# a shell (busybox) and the account files EL's 'setup' ships: tests/real/test_real_el.py's root too
BASE_SPEC = """\
Name: isobuild-test-base
Version: 1
Release: 1
Summary: what isobuild's EL steps need of a root, for the test
License: GPL
AutoReqProv: no
Provides: /bin/sh
%description
test root
%install
mkdir -p %{buildroot}/bin %{buildroot}/etc %{buildroot}/usr/lib
cp /bin/busybox %{buildroot}/bin/busybox
ln -s busybox %{buildroot}/bin/sh
echo 'root:x:0:0:root:/root:/bin/sh' > %{buildroot}/etc/passwd
echo 'root:*:19000:0:99999:7:::' > %{buildroot}/etc/shadow
echo 'root:x:0:' > %{buildroot}/etc/group
printf 'ID=isobuild-test\\nID_LIKE="rhel"\\n' > %{buildroot}/usr/lib/os-release
%files
/bin/busybox
/bin/sh
/etc/passwd
%attr(0000,root,root) /etc/shadow
/etc/group
/usr/lib/os-release
"""

# the distribution's own kernel-headers and glibc-devel: what ours must win over
DISTRO_HEADERS_SPEC = """\
Name: kernel-headers
Version: 5.14.0
Release: 1.el9
Summary: the distribution's kernel-headers (stand-in)
License: GPL
AutoReqProv: no
%description
stand-in
%install
mkdir -p %{buildroot}/usr/include/linux
echo '/* the distribution 5.14 */' > %{buildroot}/usr/include/linux/version.h
%files
/usr/include/linux/version.h
"""

GLIBC_DEVEL_SPEC = """\
Name: glibc-devel
Version: {version}
Release: {release}
Summary: glibc-devel (stand-in)
License: GPL
AutoReqProv: no
Requires: kernel-headers
%description
stand-in
%install
mkdir -p %{{buildroot}}/usr/include
echo '/* glibc {version}-{release} */' > %{{buildroot}}/usr/include/stdio.h
%files
/usr/include/stdio.h
"""

# a "compiler" that finds the includes of the source in the root and writes a program saying so
GCC_SPEC = """\
Name: gcc
Version: 11.4.1
Release: 1.el9
Summary: gcc (stand-in: checks includes, no code generation)
License: GPL
AutoReqProv: no
Requires: glibc-devel, kernel-headers, isobuild-test-base
%description
stand-in
%install
mkdir -p %{buildroot}/usr/bin
cat > %{buildroot}/usr/bin/gcc <<'EOF'
#!/bin/sh
out=; src=
while [ $# -gt 0 ]; do case "$1" in -o) out="$2"; shift;; -*) ;; *) src="$1";; esac; shift; done
for h in $(grep '^#include <' "$src" | sed 's/.*<\\(.*\\)>.*/\\1/'); do
  test -f "/usr/include/$h" || { echo "$src: fatal error: $h: No such file or directory" >&2; exit 1; }
done
printf '#!/bin/sh\\ncat /usr/include/linux/xsc.h\\n' > "$out"
EOF
chmod 755 %{buildroot}/usr/bin/gcc
for tool in sed grep cat test; do ln -s ../../bin/busybox %{buildroot}/usr/bin/$tool; done
%files
/usr/bin/gcc
/usr/bin/sed
/usr/bin/grep
/usr/bin/cat
/usr/bin/test
"""


def rpmbuild(spec: str, work: Path) -> Path:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_topdir {work / 'top'}\n")
    path = work / "x.spec"
    path.write_text(spec)
    before = set((work / "top/RPMS").glob("*/*.rpm")) if (work / "top/RPMS").is_dir() else set()
    subprocess.run(["rpmbuild", "-bb", "--quiet", str(path)], check=True, capture_output=True,
                   env=dict(os.environ, HOME=str(home)))
    (rpm,) = set((work / "top/RPMS").glob("*/*.rpm")) - before
    return rpm


def kernel_artifact(tmp_path: Path) -> Path:
    """What the kernel stage collects of headers_install: uapi/include with linux/ and asm/."""
    kernel = tmp_path / "kernel"
    (kernel / "uapi/include/linux").mkdir(parents=True)
    (kernel / "uapi/include/asm").mkdir()
    (kernel / "uapi/include/linux/xsc.h").write_text("#define XSC_VERSION_MINOR\t7\n")
    (kernel / "uapi/include/asm/unistd.h").write_text("/* asm */\n")
    return kernel


def query(rpm: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(rpm)], check=True, capture_output=True,
                          text=True, env=dict(os.environ, HOME="/nonexistent")).stdout


def test_kernel_headers_rpm_holds_the_uapi_headers_as_el_lays_them_out(tmp_path: Path) -> None:
    kernel = kernel_artifact(tmp_path)
    log = tmp_path / "log"
    first = kpkg.rpm_headers(kernel, RELEASE, ARCHES["x86_64"], tmp_path, tmp_path / "scratch", EPOCH, log)
    assert first.name == "kernel-headers-6.1.192_isobuild-1.x86_64.rpm"
    assert query(first, "%{NAME} %{VERSION} %{BUILDTIME}") == f"kernel-headers 6.1.192_isobuild {EPOCH}"
    files = subprocess.run(["rpm", "-qlp", "--nosignature", str(first)], check=True, capture_output=True,
                           text=True).stdout.split()
    assert {"/usr/include/linux/xsc.h", "/usr/include/asm/unistd.h"} <= set(files)  # asm/ directly, as EL has it
    again = tmp_path / "again"
    again.mkdir()
    second = kpkg.rpm_headers(kernel, RELEASE, ARCHES["x86_64"], again, tmp_path / "scratch2", EPOCH, log)
    assert second.read_bytes() == first.read_bytes()  # the same kernel, the same bytes


@pytest.fixture
def distribution(tmp_path: Path) -> Path:
    """The stand-in distribution's repository."""
    repo = tmp_path / "distro-repo"
    repo.mkdir()
    for spec in (BASE_SPEC, DISTRO_HEADERS_SPEC, GLIBC_DEVEL_SPEC.format(version="2.34", release="3.el9"), GCC_SPEC):
        shutil.copy(rpmbuild(spec, tmp_path / "rpmbuild"), repo)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    return repo


def build_root(tmp_path: Path, repo: Path, packages: tuple[str, ...] = ("gcc",)) -> dnf.BuildRoot:
    return dnf.BuildRoot((dnf.Repo("baseos", baseurl=f"file://{repo}", gpgcheck=False),), "9", "x86_64", packages,
                         tmp_path / "scratch", tmp_path / "dnf-cache", "distros/alma.yaml")


def test_el_tests_root_takes_our_headers_and_glibc_over_the_distributions(tmp_path: Path,
                                                                           distribution: Path) -> None:
    ours = [kpkg.rpm_headers(kernel_artifact(tmp_path), RELEASE, ARCHES["x86_64"], tmp_path, tmp_path / "kp", EPOCH,
                             tmp_path / "log"),
            rpmbuild(GLIBC_DEVEL_SPEC.format(version="2.34", release="3.el9.isobuild1"), tmp_path / "ours")]
    root_def = build_root(tmp_path, distribution)
    root_def.check()
    root = tmp_path / "root"
    inside = root_def.make(root, ours, tmp_path / "log")
    installed = {row["package"]: row["version"] for row in dnf.query(root)}
    assert installed["kernel-headers"] == "6.1.192_isobuild-1"  # ours, not the distribution's 5.14.0
    assert installed["glibc-devel"] == "2.34-3.el9.isobuild1" and installed["gcc"] == "11.4.1-1.el9"
    assert not (root / "usr/include/linux/version.h").exists()
    # the compiler runs inside the root and sees the kernel's headers there
    src = root / "build/t.c"
    src.parent.mkdir()
    src.write_text("#include <linux/xsc.h>\n#include <stdio.h>\nint main(void) { return 0; }\n")
    inside.run(["gcc", "-O2", "-o", "/build/t", "/build/t.c"])
    assert "XSC_VERSION_MINOR\t7" in inside.run(["/bin/sh", "/build/t"], capture=True).output
    assert not (tmp_path / "scratch").exists()  # dnf's configuration and our repository are for one build
    assert (tmp_path / "dnf-cache").is_dir()  # the package cache is kept for the next


def test_el_tests_root_names_a_package_no_repository_has(tmp_path: Path, distribution: Path) -> None:
    with pytest.raises(UserError, match=r"distros/alma.yaml: build root package\(s\) clang not found in the "
                                        r"configured repositories"):
        build_root(tmp_path, distribution, ("clang",)).make(tmp_path / "root", [], tmp_path / "log")


def test_el_tests_root_key_follows_its_repositories_and_packages(tmp_path: Path) -> None:
    a = build_root(tmp_path, tmp_path / "a")
    assert a.key == build_root(tmp_path / "elsewhere", tmp_path / "a").key  # not where it is made
    assert a.key != build_root(tmp_path, tmp_path / "b").key
    assert a.key != build_root(tmp_path, tmp_path / "a", ("gcc", "make")).key
