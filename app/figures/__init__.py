"""Figures of one :class:`adapt.trace.Trace`, by kind: image overlays, charts, the answers as text,
the downloadable bundle, and the admin tab's live job metrics.

Everything here is pure: a Trace in, numpy images / plotly figures / HTML out. Nothing loads a
model, so a trace file saved earlier renders exactly like a fresh analysis.
"""

from .answers import (ALIGN_CSS, COMPARE_KEY, HALLUCINATED, HIGHLIGHT_COLOURS, PRESENT, UNVERIFIED, alignment_html,
                      answer, compared_method, hallucinated_objects, has_truth, highlighted, num_steps, run_label, summary_markdown,
                      token_infos)
from .bundle import figures_zip
from .charts import amc_figure, criteria_figure, signals_figure
from .metrics import (default_metric, is_training_log, numeric_keys, row_metrics, running_metric_figure,
                      training_figure)
from .overlays import (anchor_gallery, display_image, enlarged, heat, layer_gallery, overlay, step_map, titled,
                       with_scale)

__all__ = ["ALIGN_CSS", "COMPARE_KEY", "compared_method", "run_label", "HALLUCINATED", "HIGHLIGHT_COLOURS", "PRESENT", "UNVERIFIED", "alignment_html", "amc_figure",
           "anchor_gallery", "answer", "criteria_figure", "default_metric", "display_image", "enlarged",
           "figures_zip", "hallucinated_objects", "has_truth", "heat", "highlighted", "layer_gallery", "num_steps",
           "numeric_keys", "is_training_log", "training_figure", "overlay", "row_metrics", "running_metric_figure", "signals_figure", "step_map",
           "summary_markdown", "titled", "token_infos", "with_scale"]
