"""What a run leaves behind and how it is read back: run-directory files (:mod:`~bioprop.report.logs`),
figures (:mod:`~bioprop.report.plots`, imported on demand since it loads matplotlib), comparison tables
(:mod:`~bioprop.report.tables`) and the training progress display (:mod:`~bioprop.report.progress`)."""

from bioprop.report import logs, tables
from bioprop.report.tables import compare

__all__ = ["compare", "logs", "tables"]
