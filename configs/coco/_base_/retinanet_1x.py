# RetinaNet + FPN, 1x schedule, COCO boxes. Backbone configs inherit this.
_base_ = [
    "./models/retinanet_fpn.py",
    "./datasets/coco_detection.py",
    "./schedules/adamw_1x.py",
    "./default_runtime.py",
]
