"""Picture reports: HTML evaluation reports, image panels, calibration plots, training curves.

    from probda_deploy.evaluation import evaluate_model
    from probda_deploy.report import write_report, plot_training_curves
    index = write_report(evaluate_model(...), "report/", compare=other_report)
    png = plot_training_curves("runs/train-.../")

matplotlib is imported only when a figure is drawn (Agg canvas, headless).
"""

from .calibration import CalibrationBins, plot_calibration
from .curves import plot_training_curves, read_metrics
from .html import write_report
from .panels import panel_size, render_panel

__all__ = ["CalibrationBins", "panel_size", "plot_calibration", "plot_training_curves", "read_metrics", "render_panel",
           "write_report"]
