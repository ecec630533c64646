"""Two checkouts, one work dir: what one project builds never changes what the other's status says,
and clean in one never removes what the other still uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import XSC_PATCH, FakeProject


@pytest.fixture
def other(fake_project: FakeProject, tmp_path: Path) -> FakeProject:
    """A second checkout of the same project, sharing the first one's work dir."""
    root = tmp_path / "other-checkout"
    shutil.copytree(fake_project.root, root)
    return FakeProject(root, fake_project.work, fake_project.tarball)


def rows(project: FakeProject, capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], dict[str, str]]:
    capsys.readouterr()
    assert project.run("status", "--json") == 0
    return {(r["stage"], r["name"]): r for r in json.loads(capsys.readouterr().out)}


def test_a_build_in_one_checkout_leaves_the_others_status_and_outputs_alone(
        fake_project: FakeProject, other: FakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_project.run("kernel") == 0
    mine = fake_project.current("kernel-ci-x86_64")
    assert rows(fake_project, capsys)[("kernel", "ci")]["state"] == "built"
    assert rows(other, capsys)[("kernel", "ci")]["state"] == "built", "the same inputs: the shared artifact"
    # the other checkout moves on to another series and builds it
    other.set_series({"0001-xsc.patch": XSC_PATCH.replace("= 1", "= 2")})
    assert other.run("kernel") == 0
    theirs = other.current("kernel-ci-x86_64")
    assert theirs != mine
    assert rows(fake_project, capsys)[("kernel", "ci")]["state"] == "built", "mine is still built"
    assert fake_project.current("kernel-ci-x86_64") == mine
    assert fake_project.record("kernel-ci-x86_64")["last_good"] == mine.name
    # clean in the other checkout keeps my last good kernel, and its own
    assert other.run("clean") == 0
    assert (mine / "metadata.json").is_file() and (theirs / "metadata.json").is_file()
    capsys.readouterr()
    assert fake_project.run("kernel") == 0
    assert "is up to date" in capsys.readouterr().out, "nothing to rebuild for me"


def test_a_checkout_that_is_gone_keeps_nothing(fake_project: FakeProject, other: FakeProject) -> None:
    assert other.run("kernel") == 0
    theirs = other.current("kernel-ci-x86_64")
    fake_project.set_series({"0001-xsc.patch": XSC_PATCH.replace("= 1", "= 3")})
    assert fake_project.run("kernel") == 0
    shutil.rmtree(other.root)
    assert fake_project.run("clean") == 0
    assert not theirs.exists(), "no live project points at it any more"
    assert (fake_project.current("kernel-ci-x86_64") / "metadata.json").is_file()
