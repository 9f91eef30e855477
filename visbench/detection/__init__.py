"""Detection and instance segmentation through mmdetection: runner glue, result files, the study's part.

Importing this package does not need mmdetection; the functions that run it say how to install it
(scripts/install_det.sh) when it is missing.
"""
