"""The shared stage store through isobuild itself, on the fake kernel: a second work dir pulls what the
first pushed and builds nothing; a tampered entry is refused and the stage built; bad store settings
stop every verb before it starts; isobuild cache list / push / prune."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from builder.infra.errors import ExitCode
from builder.tools import stagestore
from tests.conftest import Events, FakeProject


def _with_store(project: FakeProject, store: Path, push: bool = True) -> None:
    data = project.settings()
    data["cache"] = {"store": str(store), "push": push}
    project.write_settings(data)


def _second(project: FakeProject, tmp_path: Path, name: str) -> FakeProject:
    """The same project files in another directory with a work dir of its own (another runner)."""
    root = tmp_path / name
    shutil.copytree(project.root, root, ignore=shutil.ignore_patterns("logs"))
    other = FakeProject(root, tmp_path / f"{name}-work", project.tarball)
    data = other.settings()
    data["work_dir"] = str(other.work)
    other.write_settings(data)
    return other


def _built_and_pushed(project: FakeProject, tmp_path: Path) -> tuple[Path, str]:
    """The fake kernel built by a project that pushes into a store: (the store, the kernel's key)."""
    store = tmp_path / "store"
    _with_store(project, store)
    assert project.run("kernel") == 0
    return store, project.current("kernel-ci-x86_64").name


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_second_work_dir_pulls_the_kernel_and_builds_nothing(fake_project: FakeProject, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    store, key = _built_and_pushed(fake_project, tmp_path)
    assert stagestore.Store(store).has("kernel", key)

    other = _second(fake_project, tmp_path, "runner2")
    events = Events(other.root / "logs")
    assert other.run("kernel") == 0
    assert events.built() == set(), "nothing was built"
    assert "make" not in events.commands()
    assert any(e["event"] == "cache.pull.finish" for e in events.new())
    pulled = other.current("kernel-ci-x86_64")
    assert pulled.name == key and _tree(pulled) == _tree(fake_project.current("kernel-ci-x86_64"))
    capsys.readouterr()
    assert other.run("status") == 0
    assert "built" in capsys.readouterr().out


def test_a_tampered_entry_is_refused_and_the_stage_built_then_replaced(fake_project: FakeProject, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store, key = _built_and_pushed(fake_project, tmp_path)
    tar = stagestore.Store(store).entry_dir("kernel", key) / stagestore.TAR
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar.write_bytes(bytes(data))

    other = _second(fake_project, tmp_path, "runner2")
    events = Events(other.root / "logs")
    capsys.readouterr()
    assert other.run("kernel") == 0
    refused = [e for e in events.new() if e["event"] == "cache.refused"]
    assert len(refused) == 1 and "changed since it was pushed" in refused[0]["reason"]
    assert "cache.refused" in capsys.readouterr().err
    assert "kernel" in events.built(), "built here instead"
    stagestore.Store(store).pull("kernel", key, tmp_path / "check")  # the entry was replaced by a good one
    assert _tree(tmp_path / "check") == _tree(other.current("kernel-ci-x86_64"))


def test_with_a_secret_a_runner_takes_only_entries_signed_with_it(fake_project: FakeProject, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ISOBUILD_CACHE_SECRET: a push signs the entry; a runner with the same secret pulls it and builds
    nothing, one with another secret refuses it (naming why) and builds."""
    monkeypatch.setenv("ISOBUILD_CACHE_SECRET", "the ci secret")
    store, key = _built_and_pushed(fake_project, tmp_path)
    assert (stagestore.Store(store).entry_dir("kernel", key) / stagestore.SIGNATURE).is_file()
    same = _second(fake_project, tmp_path, "runner2")
    events = Events(same.root / "logs")
    assert same.run("kernel") == 0 and events.built() == set()

    monkeypatch.setenv("ISOBUILD_CACHE_SECRET", "another secret")
    other = _second(fake_project, tmp_path, "runner3")
    data = other.settings()
    data["cache"]["push"] = False  # a pull-only runner: the entry stays as it is
    other.write_settings(data)
    events = Events(other.root / "logs")
    assert other.run("kernel") == 0
    refused = [e for e in events.new() if e["event"] == "cache.refused"]
    assert len(refused) == 1 and "HMAC does not match ISOBUILD_CACHE_SECRET" in refused[0]["reason"]
    assert "kernel" in events.built()


def test_a_pull_only_store_is_not_written(fake_project: FakeProject, tmp_path: Path) -> None:
    store = tmp_path / "store"
    _with_store(fake_project, store, push=False)
    assert fake_project.run("kernel") == 0
    assert not store.exists() or not list(store.rglob("*"))


def test_cache_verbs_list_push_and_prune(fake_project: FakeProject, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0  # built before the project had a store
    key = fake_project.current("kernel-ci-x86_64").name
    store = tmp_path / "store"
    _with_store(fake_project, store, push=False)
    capsys.readouterr()
    assert fake_project.run("cache", "push") == 0
    assert f"pushed kernel-ci-x86_64 {key[:12]}" in capsys.readouterr().out
    assert fake_project.run("cache", "push") == 0
    assert "0 pushed, 1 already in the store" in capsys.readouterr().out
    stale = stagestore.Store(store)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metadata.json").write_text("{}")
    stale.push("kernel", "0" * 64, tmp_path / "old")
    assert fake_project.run("cache", "list") == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "kernel-ci-x86_64" in out and "000000000000" in out
    assert fake_project.run("cache", "prune", "--dry-run") == 0
    assert "would remove kernel 000000000000" in capsys.readouterr().out and stale.has("kernel", "0" * 64)
    assert fake_project.run("cache", "prune") == 0
    assert not stale.has("kernel", "0" * 64) and stale.has("kernel", key)
    capsys.readouterr()
    assert fake_project.run("cache", "key", "kernel") == 0
    assert capsys.readouterr().out.strip() == key[:12]
    assert fake_project.run("cache", "key", "nosuch") == ExitCode.USER
    assert "no stage nosuch (x86_64) with a key" in capsys.readouterr().err


def test_cache_verbs_without_a_store_say_how_to_set_one(fake_project: FakeProject,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("cache", "list") == ExitCode.USER
    assert "no stage store is configured" in capsys.readouterr().err


@pytest.mark.parametrize(("where", "env", "message"), [
    ("work", {}, r"the stage store .* and the work dir .* overlap"),
    ("project", {}, r"cache.store: .* is the project directory itself"),
    ("ok", {"ISOBUILD_CACHE_PUSH": "yes"}, r"ISOBUILD_CACHE_PUSH='yes': 1 or 0"),
    ("env-work", {}, r"ISOBUILD_CACHE_STORE: .*|the stage store .* overlap"),
])
def test_bad_store_settings_stop_before_anything_runs(fake_project: FakeProject, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, where: str,
                                                      env: dict[str, str], message: str) -> None:
    if where == "env-work":
        monkeypatch.setenv("ISOBUILD_CACHE_STORE", str(fake_project.work / "store"))
    else:
        path = {"work": fake_project.work / "store", "project": fake_project.root, "ok": tmp_path / "store"}[where]
        _with_store(fake_project, path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fake_project.run("kernel") == ExitCode.USER
    err = capsys.readouterr().err
    first = next(line for line in err.splitlines() if line.startswith("isobuild: error"))
    assert re.search(message, first), err
    assert "Traceback" not in err and not (fake_project.work / "kernel").exists()
