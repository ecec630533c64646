"""Every stage kind, in pipeline order: what ``clean`` and ``distclean`` iterate (and where a new
stage adds its line)."""

from __future__ import annotations

from builder.stages.base import Stage
from builder.stages.glibc import GlibcStage
from builder.stages.glibcrpm import GlibcRpmStage
from builder.stages.guesttests import GuestTestsStage
from builder.stages.image import ImageStage
from builder.stages.iso import IsoStage
from builder.stages.kernel import KernelStage
from builder.stages.kpackage import KernelPackageStage
from builder.stages.rootfs import RootfsStage

STAGES: tuple[type[Stage], ...] = (KernelStage, KernelPackageStage, GlibcStage, GlibcRpmStage, GuestTestsStage,
                                   RootfsStage, IsoStage, ImageStage)


def work_entries() -> set[str]:
    """The top-level work-dir entries the stages own."""
    return {entry for stage in STAGES for entry in stage.work_entries}
