# Mask R-CNN + FPN 1x on COCO, gated_cnn_small: gated CNN (MambaOut): depthwise conv, no token mixer;
# hierarchical body, strides 4-32.
_base_ = ["./_base_/mask_rcnn_1x.py"]
model = dict(
    backbone=dict(model="gated_cnn_small", drop_path_rate=0.3),
    neck=dict(in_channels=[96, 192, 384, 576]),
)
