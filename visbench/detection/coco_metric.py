"""mmdetection's CocoMetric with AP read at the largest ``maxDets``, registered as ``VisBenchCocoMetric``.

pycocotools' ``summarize()`` computes the headline AP (``stats[0]``, mmdet's ``bbox_mAP``) at
``maxDets=100`` whatever ``params.maxDets`` says (AP50, AP75 and APs/m/l use the last entry). Images
with more than 100 objects (tiled aerial images, crowded canvases) would then be scored on only their
100 best detections. ``VisBenchCocoMetric(proposal_nums=(100, 300, 1000))`` scores every AP of the set
at 1000 detections per image; with ``proposal_nums`` ending in 100 it equals mmdetection's CocoMetric.
Needs mmdetection (import this module through a config's ``custom_imports``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mmdet.evaluation.metrics import coco_metric as _coco_metric
from mmdet.evaluation.metrics.coco_metric import CocoMetric
from mmdet.registry import METRICS
from pycocotools.cocoeval import COCOeval


class MaxDetsCOCOeval(COCOeval):
    """COCOeval whose ``stats[0]`` (AP at IoU .50:.95, all areas) uses the last ``params.maxDets``."""

    def summarize(self) -> None:
        super().summarize()
        if self.params.iouType in ("bbox", "segm") and self.eval:
            precision = self.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
            area = self.params.areaRngLbl.index("all")
            values = precision[:, :, :, area, len(self.params.maxDets) - 1]
            valid = values[values > -1]
            self.stats[0] = float(np.mean(valid)) if valid.size else -1.0


@METRICS.register_module(name="VisBenchCocoMetric")
class VisBenchCocoMetric(CocoMetric):
    """CocoMetric scoring every AP at ``proposal_nums[-1]`` detections per image (see the module doc)."""

    def compute_metrics(self, results: list) -> dict[str, Any]:
        if self.use_mp_eval:
            raise ValueError("VisBenchCocoMetric: use_mp_eval=True is not supported; leave it False")
        original = _coco_metric.COCOeval
        _coco_metric.COCOeval = MaxDetsCOCOeval  # the name CocoMetric.compute_metrics instantiates
        try:
            return super().compute_metrics(results)
        finally:
            _coco_metric.COCOeval = original
