# An embedded COCO-format set from `visbench make-data` (default: Fashion-MNIST items on 128x128 canvases,
# 10 classes). Images keep their size (the resize scale is the canvas), horizontal flip for training.
# Other sets change data_root, metainfo and the Resize scale (see configs/coco/embedded/).
dataset_type = "CocoDataset"
data_root = "data/embedded/fashion_mnist_128x128/"
classes = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
img_scale = (128, 128)  # (width, height)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/train.json",
        data_prefix=dict(img="train/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file="annotations/val.json",
        data_prefix=dict(img="val/"),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
# Every AP at up to 1000 detections per image (pycocotools reads its headline AP at 100 otherwise):
# visbench.detection.coco_metric, imported by default_runtime.py's custom_imports.
val_evaluator = dict(
    type="VisBenchCocoMetric",
    ann_file=data_root + "annotations/val.json",
    metric=["bbox", "segm"],
    proposal_nums=(100, 300, 1000),
    format_only=False,
)
test_evaluator = val_evaluator
