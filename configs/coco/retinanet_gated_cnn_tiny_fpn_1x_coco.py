# RetinaNet + FPN 1x on COCO, gated_cnn_tiny: gated CNN (MambaOut): depthwise conv, no token mixer; stages
# 1-3 (strides 8-32) into the FPN.
_base_ = ["./_base_/retinanet_1x.py"]
model = dict(
    backbone=dict(model="gated_cnn_tiny", out_indices=(1, 2, 3), drop_path_rate=0.2),
    neck=dict(in_channels=[192, 384, 576]),
)
