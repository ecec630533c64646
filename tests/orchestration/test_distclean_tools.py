"""distclean: the parts that run real tools (moved from tests/unit/test_distclean.py, which
runs no process)."""

from __future__ import annotations

import subprocess

import pytest

from builder.infra.errors import ExitCode
from tests.unit.test_distclean import Tree, tree  # noqa: F401 (fixtures and helpers)


def test_a_mount_inside_a_build_root_stops_it_before_anything_is_removed(tree: Tree,  # noqa: F811 (the fixture)
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A build root with /dev bind-mounted must never be rmtree'd: distros/ goes first and refuses."""
    where = tree.work / "distros" / "debian" / "rootfs" / ".root-abc.99999999.tmp" / "dev"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        (where / "precious").write_text("host device node stand-in")
        before = tree.files()
        assert tree.run("distclean") == ExitCode.INFRA
        assert "still mounted inside" in capsys.readouterr().err
        assert tree.files() == before
    finally:
        subprocess.run(["umount", str(where)], check=True)
    assert tree.run("distclean") == 0
    assert not tree.work.exists()
