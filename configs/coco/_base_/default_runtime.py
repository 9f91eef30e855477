# Runtime shared by every detection config: hooks, logging, checkpoints, environment.
default_scope = "mmdet"
# VisBenchBackbone (every visbench model), VisBenchCocoMetric (AP at large maxDets) and the optimizer
# constructor that reads the parameters' no-weight-decay tags into mmdet's registries.
custom_imports = dict(
    imports=[
        "visbench.backbones.mmdet_backbone",
        "visbench.detection.coco_metric",
        "visbench.detection.optim_constructor",
    ],
    allow_failed_imports=False,
)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="DetVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # `visbench detect` switches to gloo on machines without CUDA
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
