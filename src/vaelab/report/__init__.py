"""The run report: one self-contained HTML page (``vaelab report RUN``).

    >>> from vaelab.report import write_report
    >>> write_report("runs/mnist5k-20250101-120000")       # -> runs/.../report.html
"""

from .figures import kl_bars, latent_traversal, project_2d
from .page import REPORT, SECTIONS, build_report, sections, write_report

__all__ = ["build_report", "write_report", "sections", "kl_bars", "latent_traversal", "project_2d", "REPORT",
           "SECTIONS"]
