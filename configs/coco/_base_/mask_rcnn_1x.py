# Mask R-CNN + FPN, 1x schedule, COCO instance segmentation: the paper's setting. Backbone configs inherit
# this.
_base_ = [
    "./models/mask_rcnn_fpn.py",
    "./datasets/coco_instance.py",
    "./schedules/adamw_1x.py",
    "./default_runtime.py",
]
