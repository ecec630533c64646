"""The EL plugin (AlmaLinux, Rocky): settings, kickstart rendering and checks,
the mock + livemedia-creator commands, the dnf helpers and the bad inputs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from builder import cli, distros
from builder.distros import el
from builder.distros.el import ELPlugin
from builder.distros.graph import Graph
from builder.infra.config import Project, Settings
from builder.infra.errors import ExitCode, InfraError, UserError
from builder.tools import dnf, kickstart

REPO = Path(__file__).resolve().parents[2]
ALMA = yaml.safe_load((REPO / "distros/alma.yaml").read_text())


def project(tmp_path: Path, **alma: Any) -> Project:
    """A project with the repository's kickstart template and an alma.yaml changed by ``alma``."""
    (tmp_path / "distros").mkdir(exist_ok=True)
    (tmp_path / "kickstart").mkdir(exist_ok=True)
    template = REPO / "kickstart/el-live.ks.j2"
    (tmp_path / "kickstart/el-live.ks.j2").write_text(template.read_text())
    (tmp_path / "distros/alma.yaml").write_text(yaml.safe_dump({**ALMA, **alma}))
    (tmp_path / "isobuild.yaml").write_text(yaml.safe_dump({"work_dir": str(tmp_path / "work")}))
    return Project(tmp_path, tmp_path / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work")))


def alma(tmp_path: Path, **changes: Any) -> ELPlugin:
    plugin = distros.load(project(tmp_path, **changes), "alma")
    assert isinstance(plugin, ELPlugin)
    return plugin


# --- the distro files and their kickstarts -----------------------------------------------------


@pytest.mark.parametrize(("name", "label", "mock_config"), [("alma", "ISOBUILD_ALMA", "almalinux-9-x86_64"),
                                                             ("rocky", "ISOBUILD_ROCKY", "rocky-9-x86_64")])
def test_repository_distro_files_are_valid(tmp_path: Path, name: str, label: str, mock_config: str) -> None:
    p = Project(REPO, REPO / "isobuild.yaml", Settings(work_dir=str(tmp_path / "work")))
    plugin = distros.load(p, name)
    assert isinstance(plugin, ELPlugin) and plugin.settings.release == "9"
    assert plugin.settings.mock.config == mock_config
    assert [r.name for r in plugin.settings.repositories] == ["baseos", "appstream"]
    assert all(r.gpgcheck and r.gpgkey for r in plugin.settings.repositories)
    layout = plugin.layout()
    assert (layout.kernel, layout.initrd, layout.squashfs, layout.label) == (
        "images/pxeboot/vmlinuz", "images/pxeboot/initrd.img", "LiveOS/squashfs.img", label)
    assert layout.cmdline == (f"root=live:CDLABEL={label} rd.live.image rd.live.overlay.overlayfs=1 "
                              "console=ttyS0,115200 console=tty0")
    ks = plugin.kickstart
    assert ks.version == "RHEL9" and ks.excluded == ["dracut-config-rescue"]
    assert {"@core", "kernel", "dracut-live", "dracut-config-generic", "grub2-efi-x64", "grub2-efi-x64-cdboot",
            "shim-x64", "syslinux"} <= set(ks.packages)


def test_kickstart_is_rendered_from_the_settings(tmp_path: Path) -> None:
    text = alma(tmp_path).kickstart.text
    lines = text.splitlines()
    assert lines[0] == "# alma 9 live, rendered by isobuild from kickstart/el-live.ks.j2"
    # the first repository is the install source; ours comes last, from inside the mock chroot
    sources = [line for line in lines if line.startswith(("url ", "repo "))]
    assert sources == [
        "url --mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/baseos",
        "repo --name=appstream --mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/appstream",
        "repo --name=isobuild-local --baseurl=file:///root/isobuild-repo --cost=1"]
    for line in ("bootloader --location=none", "shutdown", "part / --fstype=ext4 --size=6144", "rootpw --lock",
                 "lang en_US.UTF-8", "timezone Etc/UTC --utc", "%packages --exclude-weakdeps", ": > /etc/fstab"):
        assert line in lines, line
    rocky = alma(tmp_path, repositories=[{"name": "baseos", "baseurl": "https://m.invalid/$releasever/BaseOS/",
                                          "gpgcheck": False}], root_size=4096)
    assert "url --url=https://m.invalid/$releasever/BaseOS/" in rocky.kickstart.text.splitlines()
    assert "part / --fstype=ext4 --size=4096" in rocky.kickstart.text.splitlines()




BAD_KICKSTARTS = [
    # (change to the template, expected message, the line it names)
    (("shutdown\n", "shutdown\nfrobnicate --now\n"), "Unknown command: frobnicate", "frobnicate --now"),
    (("shutdown\n", "reboot\n"), "the install must end with 'shutdown'", "reboot"),
    (("bootloader --location=none", "bootloader --location=mbr"),
     "needs 'bootloader --location=none'", "bootloader --location=mbr"),
    (("shutdown\n", "shutdown\npart / --fstype=xfs --size=1024\n"),
     "partition '/': a live root is one filesystem", "part / --fstype=xfs --size=1024"),
    (("shutdown\n", "shutdown\npart /home --size=1024\n"),
     "partition '/home': a live root is one filesystem", "part /home --size=1024"),
    (("part / --fstype=ext4", "part / --fstype=ext4 --size=abc --grow"), "invalid int value: 'abc'", "part /"),
    (("shutdown\n", "shutdown\ninstall\n"), "install has been removed", "install"),
    (("shutdown\n", "shutdown\nautostep\n"), "deprecated for RHEL9: Ignoring deprecated command on line", "autostep"),
]


@pytest.mark.parametrize(("change", "message", "line"), BAD_KICKSTARTS)
def test_bad_kickstart_fails_naming_the_line(tmp_path: Path, change: tuple[str, str], message: str,
                                             line: str) -> None:
    p = project(tmp_path)
    template = tmp_path / "kickstart/el-live.ks.j2"
    text = template.read_text()
    assert change[0] in text
    template.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(UserError) as exc:
        distros.load(p, "alma")
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message.startswith("kickstart kickstart/el-live.ks.j2 (rendered for distros/alma.yaml), line ")
    assert message in exc.value.message
    number = int(re.search(r", line (\d+):", exc.value.message).group(1))  # type: ignore[union-attr]
    assert exc.value.details[0].startswith(f"{number}: {line}")


@pytest.mark.parametrize(("packages", "missing"), [(["@core", "kernel"], "dracut-live"),
                                                   (["@core", "dracut-live"], "kernel")])
def test_kickstart_without_kernel_or_dracut_live_names_packages(tmp_path: Path, packages: list[str],
                                                                missing: str) -> None:
    with pytest.raises(UserError, match=rf"line \d+: %packages lacks {missing} ") as exc:
        alma(tmp_path, packages=packages)
    assert exc.value.details[0].endswith(": %packages --exclude-weakdeps")


def test_template_errors_name_the_template(tmp_path: Path) -> None:
    p = project(tmp_path)
    template = tmp_path / "kickstart/el-live.ks.j2"
    template.write_text("lang {{ locale }}\n{% for x in %}\n")
    with pytest.raises(UserError, match=r"el-live.ks.j2, line 2: "):
        distros.load(p, "alma")
    template.write_text("lang {{ no_such_setting }}\n")
    with pytest.raises(UserError, match="'no_such_setting' is undefined") as exc:
        distros.load(p, "alma")
    assert "locale" in str(exc.value.hint)
    (tmp_path / "distros/alma.yaml").write_text(yaml.safe_dump({**ALMA, "kickstart": "kickstart/nowhere.ks.j2"}))
    with pytest.raises(UserError, match=r"distros/alma.yaml: kickstart: 'kickstart/nowhere.ks.j2' not found"):
        distros.load(p, "alma")


def test_a_bad_kickstart_stops_isobuild_alma_before_any_build(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    p = project(tmp_path)
    template = tmp_path / "kickstart/el-live.ks.j2"
    template.write_text(template.read_text().replace("shutdown\n", "reboot\n"))
    assert cli.main(["-c", str(p.config_file), "alma", "--no-smoke"]) == ExitCode.USER
    err = capsys.readouterr().err
    assert "the install must end with 'shutdown'" in err and ": reboot" in err
    assert not (tmp_path / "work" / "kernel").exists(), "nothing was built"


def test_checked_kickstart_is_remembered_but_a_build_checks_afresh(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = alma(tmp_path)
    remembered = tmp_path / "work/distros/alma/kickstart-checked.json"
    assert remembered.is_file()

    def no_parse(text: str, version: str) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(kickstart, "_parse", no_parse)
    again = alma(tmp_path)  # the same text: no parse
    assert again.kickstart.packages == plugin.kickstart.packages
    with pytest.raises(AssertionError, match="parsed again"):
        alma(tmp_path, hostname="other")  # another text: parsed
    with pytest.raises(AssertionError, match="parsed again"):
        again.prepare([], "6.1.0-isobuild", tmp_path / "log")  # a build: always parsed


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"release": "8"}, "alma.yaml: release: must be one of 9 (the EL releases isobuild can check a kickstart for)"),
    ({"release": "9.4"}, "alma.yaml: release: must be one of 9"),
    ({"repositories": []}, "alma.yaml: (top level): repositories: at least one is needed"),
    ({"repositories": [{"name": "a", "baseurl": "http://m.invalid/", "mirrorlist": "http://m.invalid/l",
                        "gpgcheck": False}]}, "alma.yaml: repositories[0]: repository 'a': give exactly one of"),
    ({"repositories": [{"name": "a", "baseurl": "http://m.invalid/"}]},
     "alma.yaml: repositories[0]: repository 'a': gpgcheck needs gpgkey"),
    ({"repositories": [{"name": "a", "baseurl": "ftp://m.invalid/", "gpgcheck": False}]},
     "alma.yaml: repositories[0].baseurl: must be an http(s):// or file:// URL"),
    ({"repositories": [{"baseurl": "http://m.invalid/", "gpgcheck": False}]},
     "alma.yaml: repositories[0]: name: required"),
    ({"repositories": [{"name": "isobuild-local", "baseurl": "http://m.invalid/", "gpgcheck": False}]},
     "the name is isobuild's own repository's"),
    ({"packages": ["kernel", "dracut live"]}, "packages: 'dracut live' is not a package or @group name"),
    ({"repositories": [{"name": "a", "baseurl": "http://m.invalid/", "gpgcheck": False},
                       {"name": "a", "baseurl": "http://n.invalid/", "gpgcheck": False}]},
     "repositories: names must differ (got a, a)"),
    ({"cmdline": "root=/dev/sda1 quiet"}, "cmdline: leave out root= and rd.live.image"),
    ({"build": "lorax"}, "alma.yaml: build: expected one of 'auto', 'mock', 'dnf'"),
    ({"label": "alma"}, "alma.yaml: label: must be 1 to 16 of A-Z 0-9 _"),
    ({"root_size": 100}, "alma.yaml: root_size: must be >= 1024"),
    ({"mirror": "x"}, "alma.yaml: mirror: unknown key"),
])
def test_bad_settings_name_file_and_key(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as exc:
        alma(tmp_path, **changes)
    assert exc.value.exit_code == ExitCode.USER
    assert message in exc.value.message


def test_unknown_release_stops_isobuild_alma_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = project(tmp_path, release="8")
    assert cli.main(["-c", str(p.config_file), "alma", "--no-smoke"]) == ExitCode.USER
    assert "alma.yaml: release: must be one of 9 (the EL releases isobuild can check a kickstart for) (got '8')" \
        in capsys.readouterr().err


def test_identity_follows_the_kickstart_and_the_build_path(tmp_path: Path) -> None:
    p = project(tmp_path)
    first = distros.load(p, "alma").identity()
    assert first["suite"] == "el9" and first["build"] == "dnf" and first["mock"] is None
    template = tmp_path / "kickstart/el-live.ks.j2"
    template.write_text(template.read_text() + "# a comment changes the kickstart\n")
    assert distros.load(p, "alma").identity()["kickstart"] != first["kickstart"]
    assert alma(tmp_path, build="mock").identity()["mock"] == {
        "config": "almalinux-9-x86_64", "packages": ["lorax-lmc-novirt"], "project": "AlmaLinux"}


# --- which build path ----------------------------------------------------------------------------


@pytest.mark.parametrize(("os_release", "expected"), [
    ('NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\n', True),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', True),
    ("ID=fedora\n", True),
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n', False),
    ("ID=ubuntu\nID_LIKE=debian\n", False),
])
def test_el_host(tmp_path: Path, os_release: str, expected: bool) -> None:
    (tmp_path / "os-release").write_text(os_release)
    assert el.el_host(tmp_path / "os-release") is expected




def test_missing_dnf_is_an_infrastructure_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = alma(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("rpm", "createrepo_c"):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(InfraError) as exc:
        plugin.prepare([], "6.1.0-isobuild", tmp_path / "log")
    assert exc.value.exit_code == ExitCode.INFRA
    assert exc.value.message == "dnf not found: the dnf build of alma needs it"
    assert exc.value.hint == "apt-get install dnf  (or run: isobuild doctor)"
    (bin_dir / "rpm").unlink()
    with pytest.raises(InfraError, match=r"^dnf, rpm not found"):
        plugin.check_host()
    with pytest.raises(InfraError, match="mock, rpm, unsquashfs not found: the mock build of alma needs it") as exc:
        alma(tmp_path, build="mock").check_host()
    assert "mock runs on EL hosts" in str(exc.value.hint)


# --- the kernel RPM --------------------------------------------------------------------------------


def test_kernel_rpm_is_picked_and_its_headers_never(tmp_path: Path) -> None:
    plugin = alma(tmp_path)
    headers = tmp_path / "kernel-headers-6.1.0_isobuild-1.x86_64.rpm"
    with pytest.raises(UserError) as exc:
        plugin.kernel_rpms([headers], "6.1.0-isobuild")
    assert exc.value.exit_code == ExitCode.USER
    assert exc.value.message == ("no kernel-6.1.0_isobuild RPM among kernel-headers-6.1.0_isobuild-1.x86_64.rpm")
    assert exc.value.hint is not None and "isobuild kernel --force" in exc.value.hint
    kernel = tmp_path / "kernel-6.1.0_isobuild-1.x86_64.rpm"
    assert plugin.kernel_rpms([headers, kernel], "6.1.0-isobuild") == [kernel]
    assert el.rpm_version("6.1.192-isobuild") == "6.1.192_isobuild"


# --- mock + livemedia-creator -----------------------------------------------------------------------


def test_mock_and_livemedia_creator_argv(tmp_path: Path) -> None:
    plugin = alma(tmp_path, build="mock")
    ks, out = tmp_path / "alma.ks", tmp_path / "out.iso"
    repo = str(tmp_path / "work/distros/alma/isobuild-local")
    mock = ["mock", "-r", "almalinux-9-x86_64", "--uniqueext=isobuild-alma"]
    assert plugin.mock_commands(ks, out) == [
        [*mock, "--init"],
        [*mock, "--install", "lorax-lmc-novirt"],
        [*mock, "--copyin", str(ks), "/root/isobuild.ks"],
        [*mock, "--copyin", repo, "/root/isobuild-repo"],
        [*mock, "--isolation=simple", "--enable-network", "--chroot", "--",
         "livemedia-creator", "--no-virt", "--make-iso", "--iso-only", "--ks=/root/isobuild.ks",
         "--resultdir=/root/isobuild-result", "--logfile=/root/isobuild-logs/livemedia-creator.log",
         "--project=AlmaLinux", "--releasever=9", "--volid=ISOBUILD_ALMA", "--iso-name=isobuild-alma.iso",
         "--title=isobuild alma live", "--nomacboot"],
        [*mock, "--copyout", "/root/isobuild-result/isobuild-alma.iso", str(out)],
    ]
    rocky = distros.load(project(tmp_path, mock={"config": "rocky-9-x86_64", "project": "Rocky Linux"}), "alma")
    assert rocky.lmc_argv()[7] == "--project=Rocky Linux"  # type: ignore[attr-defined]


def make_live_iso(tmp_path: Path, with_rootfs_img: bool) -> Path:
    """An ISO shaped like livemedia-creator's: LiveOS/squashfs.img holding the root or LiveOS/rootfs.img."""
    tree = tmp_path / "lmc-root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("ID=almalinux\n")
    (tree / "var/lib/rpm").mkdir(parents=True)
    (tree / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"SQLite format 3\0")
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    os.chmod(tree / "usr/bin/hello", 0o755)
    (tree / "bin").symlink_to("usr/bin")
    squash_src = tree
    if with_rootfs_img:
        squash_src = tmp_path / "squash-src"
        (squash_src / "LiveOS").mkdir(parents=True)
        subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(squash_src / "LiveOS/rootfs.img"), "16M"], check=True)
    squash = tmp_path / "squashfs.img"
    subprocess.run(["mksquashfs", str(squash_src), str(squash), "-noappend", "-no-progress", "-quiet"], check=True)
    image = tmp_path / "lmc.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="ISOBUILD_ALMA")
    iso.add_directory("/LIVEOS", rr_name="LiveOS")
    iso.add_file(str(squash), "/LIVEOS/SQUASHFS.IMG;1", rr_name="squashfs.img")
    iso.write(str(image))
    iso.close()
    return image




# --- dnf ------------------------------------------------------------------------------------------------


def test_dnf_argv_and_configuration(tmp_path: Path) -> None:
    plugin = alma(tmp_path)
    assert dnf.install_argv(Path("/r"), Path("/c/dnf.conf"), "9", ["@core", "kernel"], ["dracut-config-rescue"]) == [
        "dnf", "-y", "--installroot=/r", "--releasever=9", "--config=/c/dnf.conf", "--noplugins", "--refresh",
        "--exclude=dracut-config-rescue", "install", "@core", "kernel"]
    text = dnf.config(plugin.repos(), Path("/c/repos.d"))
    sections = dict(re.findall(r"\[([^\]]+)\]\n(.*?)(?:\n\n|$)", text, re.S))
    assert list(sections) == ["main", "baseos", "appstream", "isobuild-local"]
    assert "reposdir=/c/repos.d" in sections["main"] and "install_weak_deps=False" in sections["main"]
    assert sections["baseos"].splitlines() == [
        "name=baseos", "mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/baseos", "gpgcheck=1",
        "gpgkey=https://repo.almalinux.org/almalinux/RPM-GPG-KEY-AlmaLinux-9"]
    assert sections["isobuild-local"].splitlines() == [
        "name=isobuild-local", f"baseurl=file://{tmp_path}/work/distros/alma/isobuild-local", "gpgcheck=0",
        "priority=1"]


def test_expand_knows_releasever_and_basearch() -> None:
    assert dnf.expand("http://m.invalid/$releasever/${basearch}/$basearch", "9", "x86_64") == \
        "http://m.invalid/9/x86_64/x86_64"
    with pytest.raises(UserError, match=r"\$contentdir is not a variable isobuild knows"):
        dnf.expand("http://m.invalid/$contentdir/9", "9", "x86_64")


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over a directory (mirror lists and repodata)."""
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_probe_follows_a_mirror_list_to_the_repodata(http_dir: tuple[Path, str]) -> None:
    served, url = http_dir
    (served / "el/9/BaseOS/x86_64/os/repodata").mkdir(parents=True)
    (served / "el/9/BaseOS/x86_64/os/repodata/repomd.xml").write_text("<repomd/>")
    (served / "mirrorlist").write_text(f"# mirrors\n{url}/el/9/BaseOS/$basearch/os/\nhttp://127.0.0.1:9/other/\n")
    repo = dnf.Repo("baseos", mirrorlist=f"{url}/mirrorlist")
    assert dnf.probe(repo, "9", "x86_64", "distros/alma.yaml") == f"{url}/el/9/BaseOS/x86_64/os/"
    assert dnf.probe(dnf.Repo("b", baseurl=f"{url}/el/$releasever/BaseOS/$basearch/os"), "9", "x86_64", "x") == \
        f"{url}/el/9/BaseOS/x86_64/os"
    with pytest.raises(InfraError, match=rf"repository 'appstream' of distros/alma.yaml is unreachable: "
                                         rf"{url}/el/9/AppStream/x86_64/os/: HTTP 404 File not found"):
        dnf.probe(dnf.Repo("appstream", baseurl=f"{url}/el/$releasever/AppStream/$basearch/os/"), "9", "x86_64",
                  "distros/alma.yaml")
    (served / "empty-list").write_text("# no mirror today\n")
    with pytest.raises(InfraError, match=r"the mirror list .*/empty-list names no mirror"):
        dnf.probe(dnf.Repo("baseos", mirrorlist=f"{url}/empty-list"), "9", "x86_64", "distros/alma.yaml")


def test_unreachable_repository_fails_fast_naming_it(tmp_path: Path) -> None:
    plugin = alma(tmp_path, repositories=[
        {"name": "baseos", "baseurl": f"file://{tmp_path}/nowhere", "gpgcheck": False},
        {"name": "appstream", "baseurl": "http://127.0.0.1:9/el/$releasever/AppStream/", "gpgcheck": False}])
    with pytest.raises(InfraError) as exc:
        plugin.probe_repositories()
    assert exc.value.exit_code == ExitCode.INFRA
    assert exc.value.message.startswith(f"repository 'baseos' of distros/alma.yaml is unreachable: "
                                        f"file://{tmp_path}/nowhere: ")
    (tmp_path / "nowhere/repodata").mkdir(parents=True)
    (tmp_path / "nowhere/repodata/repomd.xml").write_text("<repomd/>")
    with pytest.raises(InfraError, match=r"repository 'appstream' of distros/alma.yaml is unreachable: "
                                         r"http://127.0.0.1:9/el/9/AppStream/: .*refused"):
        plugin.probe_repositories()


def test_hold_excludes_the_names_from_the_roots_dnf(tmp_path: Path) -> None:
    conf = tmp_path / "etc/dnf/dnf.conf"
    dnf.hold(tmp_path, ["kernel", "kernel-core"])
    assert conf.read_text() == "[main]\nexcludepkgs=kernel kernel-core\n"
    conf.write_text("[main]\ngpgcheck=1\nexclude=foo,kernel\n\n[extra]\nexcludepkgs=bar\n")
    dnf.hold(tmp_path, ["kernel", "glibc"])
    assert conf.read_text() == "[main]\ngpgcheck=1\nexclude=foo kernel glibc\n\n[extra]\nexcludepkgs=bar\n"
    conf.write_text("[main]\ngpgcheck=1\n")
    dnf.hold(tmp_path, ["kernel"])
    assert conf.read_text() == "[main]\nexcludepkgs=kernel\ngpgcheck=1\n"




# --- the EL live steps -------------------------------------------------------------------------------


def test_dracut_argv_and_boot_files(tmp_path: Path) -> None:
    plugin = alma(tmp_path)
    assert plugin.dracut_argv("6.1.0-isobuild") == [
        "dracut", "--force", "--no-hostonly", "--reproducible", "--add", "dmsquash-live",
        "/boot/initramfs-6.1.0-isobuild.img", "6.1.0-isobuild"]
    assert plugin.boot_files(Path("/r"), "6.1.0-isobuild") == (
        "/boot/vmlinuz-6.1.0-isobuild", "/boot/initramfs-6.1.0-isobuild.img")




def test_cli_has_the_alma_and_rocky_verbs() -> None:
    for name in ("alma", "rocky"):
        args = cli.parser().parse_args([name, "--no-smoke", "--modes", "bios-cd"])
        assert (args.func, args.distro, args.no_smoke) == (cli.cmd_distro, name, True)
        assert cli.parser().parse_args(["test", name]).target == name


def test_rootfs_without_its_kernel_or_glibc_rpms_names_what_to_run(tmp_path: Path) -> None:
    """The rootfs stage refuses to start without the kernel artifact, then without the glibc
    RPMs, each time naming the verb that builds them (for an EL distro: its own)."""
    from types import SimpleNamespace

    from builder.stages import rootfs

    plugin = alma(tmp_path)
    kernel_dir, glibc_dir = tmp_path / "kernel-artifact", tmp_path / "glibc-artifact"

    def meta(directory: Path) -> Any:
        return lambda: json.loads((directory / "metadata.json").read_text()) \
            if (directory / "metadata.json").exists() else None

    kernel = SimpleNamespace(artifact=kernel_dir, instance="ci", arch="x86_64", key="k" * 64, built=meta(kernel_dir))
    package = SimpleNamespace(kernel=kernel, arch="x86_64", key="p" * 64, built=lambda: {"packages": []},
                              files=lambda: [])
    glibc = SimpleNamespace(key="0" * 64, artifact=glibc_dir, built=meta(glibc_dir))
    p = rootfs.Plan(plugin, package, glibc, rootfs.DistroLayout(tmp_path / "d"),  # type: ignore[arg-type]
                    tmp_path / "cache", "", {}, "1" * 64, None)
    with pytest.raises(UserError) as exc:
        rootfs.build(p, tmp_path / "log")
    assert "kernel for profile ci (x86_64) is missing or stale" in exc.value.message
    assert exc.value.hint == "run: isobuild kernel --profile ci"
    kernel_dir.mkdir()
    (kernel_dir / "metadata.json").write_text(json.dumps({"kernel_release": "6.1.1", "key": "k",
                                                          "make_env": {"SOURCE_DATE_EPOCH": "1"}}))
    with pytest.raises(UserError) as exc:
        rootfs.build(p, tmp_path / "log")
    assert f"glibc packages for alma are missing or stale ({glibc_dir})" in exc.value.message
    assert exc.value.hint == "run: isobuild alma"
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_el_guest_tests_compile_in_a_dnf_root_of_gcc_against_our_kernel_headers(tmp_path: Path) -> None:
    """An EL image's guest tests: built in a dnf root of the release's gcc (the distribution's
    repositories, not ours: the handed-in packages come with the build), against the kernel's
    kernel-headers RPM -- a package kind no image installs."""
    p = project(tmp_path)
    (tmp_path / "tests/guest").mkdir(parents=True)
    (tmp_path / "tests/guest/t.c").write_text("int main(void) { return 0; }\n")
    graph = Graph(p, "ci", "x86_64")
    stages = graph.distro(graph.load("alma"))
    assert stages.guest_tests is not None
    assert stages.guest_tests.libc_dev.what == "rpm-headers" and stages.kernel_package.what == "rpm"
    root = stages.guest_tests.plugin.tests_root()
    assert isinstance(root, dnf.BuildRoot)
    assert [r.name for r in root.repos] == ["baseos", "appstream"] and root.packages == ("gcc",)
    assert (root.release, root.arch, root.where) == ("9", "x86_64", "distros/alma.yaml")
