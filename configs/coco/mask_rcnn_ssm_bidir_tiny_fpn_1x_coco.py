# Mask R-CNN + FPN 1x on COCO, ssm_bidir_tiny: SSM, bidirectional scan (Vim order); hierarchical body,
# strides 4-32.
_base_ = ["./_base_/mask_rcnn_1x.py"]
model = dict(
    backbone=dict(model="ssm_bidir_tiny", drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 576]),
)
