# The study's detection runs: Mask R-CNN + FPN on Fashion-MNIST canvases (`visbench make-data fashion_mnist`),
# small enough to train for a few hundred iterations on a CPU. The study (visbench.detection.study) sets the
# model, its widths, the canvas size and the iteration count over this file; the heads are narrower than
# COCO's (64-channel FPN, 256-unit box head, 2-conv mask head) and the schedule is iteration-based.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/datasets/embedded_instance.py",
    "../_base_/default_runtime.py",
]

max_iters = 200
channels = 64
model = dict(
    backbone=dict(model="gated_cnn_tiny", dims=(64, 96, 128, 192), depths=(1, 1, 2, 1), drop_path_rate=0.0),
    neck=dict(in_channels=[64, 96, 128, 192], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=10),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(num_convs=2, in_channels=channels, conv_out_channels=channels, num_classes=10),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200), rcnn=dict(max_per_img=100)),
)
train_dataloader = dict(batch_size=4)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10**9)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=20)]
# From scratch and short: a larger learning rate than the paper's 1e-4 (which assumes a pretrained backbone).
optim_wrapper = dict(
    type="OptimWrapper",
    # decay_mult=0 for parameters tagged no-weight-decay where created (A_log, D, pos_embed, cls_token)
    constructor="TaggedDecayOptimWrapperConstructor",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0),
)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=20),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(type="DetVisualizationHook", draw=False),
)
log_processor = dict(type="LogProcessor", window_size=20, by_epoch=False)
randomness = dict(seed=0, deterministic=False)
