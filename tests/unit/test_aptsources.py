"""The default mirror comes from the host's apt configuration, in both formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.infra.errors import UserError
from builder.tools import aptsources

# Placeholders only: the repository never names a real archive host.
MIRROR = "http://mirror.invalid/archive"
SECURITY = "http://mirror.invalid/archive-security"


def apt_dir(tmp_path: Path, sources: str | None = None, one_line: str | None = None) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources is not None:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    if one_line is not None:
        (tmp_path / "sources.list").write_text(one_line)
    return tmp_path


def test_deb822_sources(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, f"""Types: deb
# a comment
URIs: {MIRROR}/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main
""")
    assert aptsources.default_mirror("bookworm", d) == MIRROR
    assert aptsources.default_mirror("bookworm-security", d) == SECURITY


def test_disabled_stanzas_and_deb_src_are_skipped(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, f"Types: deb-src\nURIs: {SECURITY}\nSuites: bookworm\n\n"
                          f"Enabled: no\nTypes: deb\nURIs: {SECURITY}\nSuites: bookworm\n\n"
                          f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm\n")
    assert aptsources.default_mirror("bookworm", d) == MIRROR


def test_one_line_sources_list_with_options(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, one_line=f"# comment\ndeb-src {SECURITY} bookworm main\n"
                                   f"deb [arch=amd64 signed-by=/k.gpg] {MIRROR} bookworm main contrib\n")
    assert aptsources.default_mirror("bookworm", d) == MIRROR
    (src,) = [s for s in aptsources.host_sources(d) if "deb" in s.types]
    assert src.components == ("main", "contrib") and src.origin.endswith("sources.list:3")


def test_no_source_for_the_suite_is_a_clear_error(tmp_path: Path) -> None:
    d = apt_dir(tmp_path, f"Types: deb\nURIs: {MIRROR}\nSuites: bullseye\n")
    with pytest.raises(UserError, match="no 'deb' source for suite 'bookworm'") as exc:
        aptsources.default_mirror("bookworm", d)
    assert "mirror:" in (exc.value.hint or "")


def test_this_host_has_a_bookworm_source() -> None:
    assert aptsources.default_mirror("bookworm").startswith(("http://", "https://", "file:/"))
