# The paper's 1x schedule: 12 epochs, AdamW lr 1e-4, weight decay 0.05, batch 16 (8 GPUs x 2 images),
# linear warm-up for 500 iterations, lr x0.1 after epochs 8 and 11.
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type="OptimWrapper",
    # decay_mult=0 for parameters tagged no-weight-decay where created (A_log, D, pos_embed, cls_token)
    constructor="TaggedDecayOptimWrapperConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # no weight decay on normalisation layers and position embeddings (as Swin / VMamba detection)
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={"pos_embed": dict(decay_mult=0.0)}),
)
# lr 1e-4 is for a total batch of 16; `--cfg-options auto_scale_lr.enable=True` rescales it linearly.
auto_scale_lr = dict(enable=False, base_batch_size=16)
