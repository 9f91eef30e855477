# Mask R-CNN + FPN 1x on COCO, vit_tiny: ViT, full attention; isotropic body (stride 16) + ViTDet simple
# feature pyramid (strides 4-32, widths D/4, D/2, D, D).
_base_ = ["./_base_/mask_rcnn_1x.py"]
model = dict(
    backbone=dict(model="vit_tiny", drop_path_rate=0.1),
    neck=dict(in_channels=[48, 96, 192, 192]),
)
