"""Reproducibility, proven by rebuilding: isobuild rebuild-check builds the Debian ISO again from nothing
in another directory and compares every file by sha256.  Default tier: the root and the ISO rebuilt
over our kernel and glibc (--from rootfs), then a hook that stamps the build time into the root is
named as the difference, with diffoscope's words for it.  Full tier: every stage rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from builder.infra.errors import ExitCode
from tests.real.conftest import WORK, run

pytestmark = pytest.mark.real


def test_the_root_and_iso_rebuild_bit_identical_and_a_build_stamp_is_named(project: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    capsys.readouterr()
    assert run(project, "rebuild-check", "debian", "--profile", "ci", "--from", "rootfs") == 0, \
        capsys.readouterr().out
    out = capsys.readouterr().out
    assert "reproducible: every file of 2 stages rebuilt from nothing has the same sha256" in out
    verdict = json.loads((project / "logs/rebuild-check-debian.json").read_text())
    assert verdict["reproducible"] and {s["stage"] for s in verdict["stages"]} == {"rootfs-debian-x86_64",
                                                                                    "iso-debian-x86_64"}
    assert not list(WORK.glob(f".rebuild-check.{os.getpid()}.tmp")), "the scratch directories are gone"

    hook = project / "hooks" / "stamp.sh"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\ndate +%s.%N > /etc/build-stamp\n")
    os.chmod(hook, 0o755)
    path = project / "distros/debian.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    data["hooks"] = ["hooks/stamp.sh"]
    path.write_text(yaml.safe_dump(data))
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    capsys.readouterr()
    assert run(project, "rebuild-check", "debian", "--profile", "ci", "--from", "rootfs") == ExitCode.CHECK_FAILED
    captured = capsys.readouterr()
    assert "not reproducible, first difference rootfs-debian-x86_64/filesystem.squashfs" in captured.err
    assert "/etc/build-stamp" in captured.out, "diffoscope names the file inside the squashfs"
    verdict = json.loads((project / "logs/rebuild-check-debian.json").read_text())
    assert not verdict["reproducible"] and verdict["first_difference"] == "rootfs-debian-x86_64/filesystem.squashfs"


@pytest.mark.skipif(not os.environ.get("ISOBUILD_FULL"), reason="every stage rebuilt from nothing (the ci kernel and "
                    "glibc too: about 17 minutes): ISOBUILD_FULL=1")
def test_every_stage_of_the_iso_rebuilds_bit_identical(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "debian", "--profile", "ci", "--no-smoke") == 0, capsys.readouterr().err
    capsys.readouterr()
    assert run(project, "rebuild-check", "debian", "--profile", "ci") == 0, capsys.readouterr().out
    verdict = json.loads((project / "logs/rebuild-check-debian.json").read_text())
    stages = {s["stage"]: s for s in verdict["stages"]}
    assert set(stages) == {"kernel-ci-x86_64", "kernel-package-ci.deb-image-x86_64", "glibc-x86_64",
                           "rootfs-debian-x86_64", "iso-debian-x86_64"}
    assert all(s["files"] > 0 and not s["differing"] and s["missing"] is None for s in stages.values())
    print(f"rebuild-check (ci profile, every stage): {verdict['seconds']} s")
