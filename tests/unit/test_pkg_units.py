"""isobuild pkg's parts without a VM or a subprocess: the package list, keys and scheduling, the
loopback apt proxy, the guestfwd rule, distcc's names and log counts, results."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.commands import pkg
from builder.infra import atomic
from builder.infra.arch import ARCHES
from builder.infra.config import PkgSettings, Project, Settings
from builder.infra.errors import UserError
from builder.stages import glibc
from builder.tools import aptproxy, distcc, pkglist, relay
from builder.tools import vm as vmt
from builder.tools.pkglist import Entry


def _project(tmp_path: Path, **pkg_settings: object) -> Project:
    settings = Settings(pkg=PkgSettings(**pkg_settings))  # type: ignore[arg-type]
    (tmp_path / "isobuild.yaml").write_text("{}\n")
    return Project(tmp_path, tmp_path / "isobuild.yaml", settings)


# --- the package list ----------------------------------------------------------------------------------------


def test_entries_of_each_kind() -> None:
    assert pkglist.parse_entry("hello", "x") == Entry("hello", "archive", "hello")
    assert pkglist.parse_entry("zlib=1:1.2.13.dfsg-1", "x") == Entry("zlib=1:1.2.13.dfsg-1", "archive", "zlib",
                                                                      "1:1.2.13.dfsg-1")
    dsc = pkglist.parse_entry("./vendor/foo_1.0-1.dsc", "x")
    assert (dsc.kind, dsc.name, dsc.path) == ("dsc", "foo", "./vendor/foo_1.0-1.dsc")
    tree = pkglist.parse_entry("./src/mytool/", "x")
    assert (tree.kind, tree.name) == ("dir", "mytool")


@pytest.mark.parametrize(("text", "message"), [
    ("Hello", "is not a source package name"),
    ("hello=x y", "is not a Debian version"),
    ("hel/lo", "is not a source package name"),
])
def test_bad_entries_are_named(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        pkglist.parse_entry(text, "packages.list:3")


def test_list_read_add_remove_keep_comments(tmp_path: Path) -> None:
    path = tmp_path / "packages.list"
    assert pkglist.read(path) == []
    added = pkglist.add(path, [pkglist.parse_entry("hello", "t"), pkglist.parse_entry("zlib", "t")])
    assert [e.name for e in added] == ["hello", "zlib"]
    text = path.read_text()
    path.write_text(text + "# a note kept\n")
    assert pkglist.add(path, [pkglist.parse_entry("hello", "t")]) == []  # listed already
    pkglist.add(path, [pkglist.parse_entry("hello=2.10-3", "t")])  # a new version replaces the line
    assert [e.text for e in pkglist.read(path)] == ["hello=2.10-3", "zlib"]
    pkglist.remove(path, ["zlib"])
    assert [e.text for e in pkglist.read(path)] == ["hello=2.10-3"]
    assert "# a note kept" in path.read_text()
    with pytest.raises(UserError, match=r"nosuch not listed"):
        pkglist.remove(path, ["nosuch"])


def test_list_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "packages.list"
    path.write_text("hello\n\n# c\nhello  # again\n")
    with pytest.raises(UserError, match=r"packages.list:4: hello is listed twice \(line 1 too\)"):
        pkglist.read(path)
    path.write_text("hello zlib\n")
    with pytest.raises(UserError, match=r"packages.list:1: 'hello zlib': one package per line"):
        pkglist.read(path)


def test_shards_cover_the_list_once() -> None:
    entries = [pkglist.parse_entry(f"p{i}", "t") for i in range(7)]
    shards = [pkglist.shard(entries, f"{i}/3") for i in (1, 2, 3)]
    assert sorted(e.name for s in shards for e in s) == sorted(e.name for e in entries)
    assert [len(s) for s in shards] == [3, 2, 2]
    for bad in ("0/3", "4/3", "a/b", "1"):
        with pytest.raises(UserError, match="--shard"):
            pkglist.shard(entries, bad)


# --- sources, keys, scheduling -------------------------------------------------------------------------------


def _dsc(tmp_path: Path, tamper: bool = False) -> Path:
    data = b"tarball"
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "foo_1.0.tar.xz").write_bytes(data + (b"!" if tamper else b""))
    dsc = tmp_path / "foo_1.0.dsc"
    dsc.write_text(f"Format: 3.0 (native)\nSource: foo\nVersion: 1.0\nChecksums-Sha256:\n {sha} {len(data)} "
                   "foo_1.0.tar.xz\n")
    return dsc


def test_local_dsc_checked_against_its_checksums(tmp_path: Path) -> None:
    source = pkg.local_dsc(_dsc(tmp_path), "t")
    assert (source.name, source.version) == ("foo", "1.0")
    assert set(source.identity["files"]) == {"foo_1.0.tar.xz"}
    with pytest.raises(UserError, match=r"foo_1.0.tar.xz has sha256 [0-9a-f]{64}; the .dsc says"):
        pkg.local_dsc(_dsc(tmp_path, tamper=True), "t")


def test_local_tree_key_follows_content(tmp_path: Path) -> None:
    tree = tmp_path / "mytool"
    (tree / "debian").mkdir(parents=True)
    (tree / "debian" / "control").write_text("Source: mytool\n")
    (tree / "debian" / "changelog").write_text("mytool (0.1-1) unstable; urgency=medium\n")
    first = pkg.local_tree(tree, "t")
    assert (first.name, first.version) == ("mytool", "0.1-1")
    (tree / "main.c").write_text("int main(void) { return 0; }\n")
    assert pkg.local_tree(tree, "t").identity != first.identity
    with pytest.raises(UserError, match="is not an unpacked source package"):
        pkg.local_tree(tmp_path, "t")


def test_changelog_entry_gives_our_version_dated_after_debian(tmp_path: Path) -> None:
    changelog = tmp_path / "changelog"
    changelog.write_text("hello (2.10-3) unstable; urgency=medium\n\n  * x\n\n"
                         " -- Someone <s@example.invalid>  Sun, 14 Aug 2022 10:00:00 +0200\n")
    glibc.changelog_entry(changelog, "2.10-3+isobuild1", [], heading="our series (pkg.patches/hello) applied")
    head = changelog.read_text().splitlines()
    assert head[0] == "hello (2.10-3+isobuild1) unstable; urgency=medium"
    assert any("Sun, 14 Aug 2022 10:00:01 +0200" in line for line in head[:8])
    assert "  * isobuild: our series (pkg.patches/hello) applied:" in head


def test_parallel_from_cpus_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    meminfo.write_text("MemAvailable:   8388608 kB\n")  # 8 GiB: (8192 - 2048) // (2048 + 512) = 2
    assert pkg.default_parallel(_project(tmp_path), meminfo) == 2
    meminfo.write_text("MemAvailable:   67108864 kB\n")  # 64 GiB: the 8 CPUs bound it
    assert pkg.default_parallel(_project(tmp_path), meminfo) == 8
    meminfo.write_text("MemAvailable:   1048576 kB\n")  # 1 GiB: still one
    assert pkg.default_parallel(_project(tmp_path), meminfo) == 1
    assert pkg.default_parallel(_project(tmp_path, parallel=3), meminfo) == 3


def test_registry_hands_out_distinct_ports_and_takes_them_back() -> None:
    registry = pkg.Registry()
    ports = [registry.port(20000) for _ in range(5)]
    assert len(set(ports)) == 5
    registry.free(ports[0])
    assert registry.port(20000) == ports[0]  # a finished build's port serves the next one


def test_results_table_json_junit(tmp_path: Path) -> None:
    project = _project(tmp_path)
    outcomes = [pkg.Outcome("hello", "x86_64", "2.10-3", "built", 12.5, "/w/pkgs/x86_64/hello/2.10-3",
                            debs=["hello_2.10-3_amd64.deb"], distcc={"host_compiles": 9, "host_failures": 0}),
                pkg.Outcome("broken", "x86_64", "1.0", "failed", 3.0, log="/l/broken.log",
                            error="broken/x86_64: the build failed (exit 2)", details=["make: *** [all] Error 1"])]
    text = pkg.table(outcomes)
    assert "9 compiles on the host" in text and "the build failed (exit 2) (log: /l/broken.log)" in text
    json_path, xml_path = pkg.write_results(project, "x86_64", outcomes)
    suite = ET.parse(xml_path).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='broken']/failure")
    assert failure is not None and "Error 1" in (failure.text or "")
    assert '"status": "built"' in json_path.read_text()


# --- the guest's way out: relay, apt proxy ---------------------------------------------------------------------


def test_guestfwd_rule_names_only_loopback_ports() -> None:
    rule = relay.guestfwd(80, 41234)
    assert rule.startswith(f"guestfwd=tcp:{relay.GUEST_HOST}:80-cmd:")
    assert rule.endswith(" 41234") and "127.0.0.1" not in rule.split("cmd:")[1].split()[0]


def test_vm_argv_for_a_build_vm_keeps_qemu_a_child_with_its_forwards(tmp_path: Path) -> None:
    record = vmt.Record("pkg-hello", "x86_64", "debian", "/i.qcow2", "k", 10022, "bios", False, 2, 2048, 1 << 34)
    argv = vmt.argv(ARCHES["x86_64"], "tcg", vmt.Machine(tmp_path), record, daemonize=False,
                    forwards=(relay.guestfwd(80, 4000),))
    assert "-daemonize" not in argv
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev and "hostfwd=tcp:127.0.0.1:10022-:22" in netdev
    assert f"guestfwd=tcp:{relay.GUEST_HOST}:80-cmd:" in netdev


def _mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    (root / "dists" / "bookworm").mkdir(parents=True)
    (root / "dists" / "bookworm" / "InRelease").write_text("signed\n")
    (root / "pool" / "main" / "h" / "hello").mkdir(parents=True)
    (root / "pool" / "main" / "h" / "hello" / "hello_2.10-3_amd64.deb").write_bytes(b"deb" * 1000)
    (tmp_path / "secret").write_text("outside the mirror\n")
    return root


def test_apt_proxy_serves_the_mirror_only_and_caches_pool_files(tmp_path: Path) -> None:
    root = _mirror(tmp_path)
    with aptproxy.AptProxy(f"file://{root}", tmp_path / "cache") as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        assert urllib.request.urlopen(f"{base}/dists/bookworm/InRelease").read() == b"signed\n"
        deb = "/pool/main/h/hello/hello_2.10-3_amd64.deb"
        assert urllib.request.urlopen(base + deb).read() == b"deb" * 1000
        assert urllib.request.urlopen(base + deb.replace("_2.10", "%5f2.10")).read() == b"deb" * 1000  # apt-style
        assert urllib.request.urlopen(base + deb).read() == b"deb" * 1000
        for bad in ("/../secret", "/dists/../../secret", "/etc/passwd", "/pool/x?y=1", "/http://elsewhere/",
                    "/pool/%2e%2e/%2e%2e/secret", "/pool/%2E%2E/%2e%2e/secret", "/dists//secret"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(base + bad)
            assert exc.value.code in (403, 404), bad
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/pool/main/n/nosuch.deb")
        assert missing.value.code == 404
        counts = proxy.counts
    assert counts.hits == 2 and counts.refused >= 6
    assert (tmp_path / "cache" / "pool" / "main" / "h" / "hello" / "hello_2.10-3_amd64.deb").is_file()
    assert not list((tmp_path / "cache").rglob(".*.tmp"))


def test_apt_proxy_listens_on_loopback_only(tmp_path: Path) -> None:
    with aptproxy.AptProxy(f"file://{_mirror(tmp_path)}", tmp_path / "cache") as proxy:
        assert proxy.server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize("path", ["/dists/bookworm/main/binary-amd64/Packages.xz", "/pool/main/h/hello/h_1.deb"])
def test_allowed_paths(path: str) -> None:
    assert aptproxy.allowed(path)


# --- distcc ----------------------------------------------------------------------------------------------------


def test_distcc_names_map_every_driver_to_the_suites_compiler() -> None:
    names = distcc.names("riscv64-linux-gnu", "14")
    assert names["gcc"] == names["cc"] == names["riscv64-linux-gnu-gcc-14"] == "/usr/bin/riscv64-linux-gnu-gcc-14"
    assert names["c++"] == names["g++-14"] == "/usr/bin/riscv64-linux-gnu-g++-14"


def test_distccd_listens_on_loopback_and_allows_loopback_only(tmp_path: Path) -> None:
    argv = distcc.server_argv(tmp_path, 4567, 4)
    assert argv[argv.index("--listen") + 1] == "127.0.0.1"
    assert argv[argv.index("--allow") + 1] == "127.0.0.1"
    assert "--enable-tcp-insecure" not in argv


def test_distccd_missing_from_the_tool_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"distccd missing: .*/usr/bin/distccd is not there"):
        distcc.check_server(tmp_path)


def test_distcc_counts_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "distccd.log"
    log.write_text("distccd[7] (dcc_job_summary) client: 127.0.0.1:1 COMPILE_OK exit:0 sig:0 core:0 ret:0 time:9ms "
                   "gcc a.c\n" * 3 + "distccd[7] (dcc_job_summary) client: 127.0.0.1:1 COMPILE_ERROR exit:1\n"
                   "distccd[7] (dcc_job_summary) client: 127.0.0.1:2 OTHER exit:0 ret:108\n")
    assert distcc.counts(log) == distcc.Counts(3, 1)
    assert distcc.counts(tmp_path / "none") == distcc.Counts(0, 0)


def test_gcc_major_is_the_roots_newest(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    for name in ("aarch64-linux-gnu-gcc-12", "aarch64-linux-gnu-gcc-ar-12", "aarch64-linux-gnu-gcc-9"):
        (tmp_path / "usr" / "bin" / name).touch()
    assert distcc.gcc_major(tmp_path, "aarch64-linux-gnu") == "12"


def test_guest_env_points_distcc_at_the_relay() -> None:
    env = distcc.guest_env(4)
    assert env["DISTCC_HOSTS"] == f"{relay.GUEST_HOST}:{distcc.GUEST_PORT}/4"
    assert env["DISTCC_FALLBACK"] == "0"


def _built(work: Path, arch: str, source: str, version: str, debs: dict[str, bytes], when: str) -> None:
    d = work / "pkgs" / arch / source / version
    d.mkdir(parents=True)
    for name, data in debs.items():
        (d / name).write_bytes(data)
    (d / pkglist.RECORD).write_text(json.dumps({
        "version": version, "built": when, "debs": sorted(debs),
        "sha256": {n: hashlib.sha256(v).hexdigest() for n, v in debs.items()}}))


def test_built_debs_by_binary_name_newest_build_wins(tmp_path: Path) -> None:
    _built(tmp_path, "x86_64", "hello", "2.10-2", {"hello_2.10-2_amd64.deb": b"old"}, "2026-01-01T00:00:00Z")
    _built(tmp_path, "x86_64", "hello", "2.10-3", {"hello_2.10-3_amd64.deb": b"new",
                                                   "hello-dbgsym_2.10-3_amd64.deb": b"dbg"}, "2026-02-01T00:00:00Z")
    _built(tmp_path, "arm64", "hello", "2.10-3", {"hello_2.10-3_arm64.deb": b"arm"}, "2026-02-01T00:00:00Z")
    built = pkglist.built_debs(tmp_path, "x86_64")
    assert set(built) == {"hello", "hello-dbgsym"}
    assert built["hello"].version == "2.10-3" and built["hello"].path.read_bytes() == b"new"
    assert built["hello"].sha256 == hashlib.sha256(b"new").hexdigest()
    assert pkglist.built_debs(tmp_path, "riscv64") == {}


def test_scratch_names_are_temps_the_sweep_recognises() -> None:
    name = atomic.temp_path(Path("/w/pkgs/x86_64/hello"), "build").name
    assert atomic.TEMP.fullmatch(name), name




def test_a_build_dependency_pinned_to_debians_glibc_is_explained(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("The following packages have unmet dependencies:\n"
                   " libc6-dev-i386 : Depends: libc6-dev (= 2.36-9+deb12u14) but 2.36-9+deb12u14+isobuild1 is to be "
                   "installed\nE: Unable to correct problems, you have held broken packages.\n")
    cause = pkg.diagnose(log)
    assert cause is not None and "libc6-dev-i386 needs Debian's libc6-dev 2.36-9+deb12u14" in cause
    assert "nobiarch" in cause
    log.write_text("make: *** [all] Error 1\n")
    assert pkg.diagnose(log) is None
