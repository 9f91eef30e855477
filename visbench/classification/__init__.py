"""Image classification on timm's pieces: train, evaluate, checkpoint (``visbench train`` / ``eval``).

- ``cli``: what both subcommands share on the command line (config arguments, user errors).
- ``trainer``: the resumable train loop over one ``TrainState``; ``visbench train``.
- ``evaluate``: top-1 / top-5 of saved weights; ``visbench eval``.
- ``checkpoints``: atomic, resumable checkpoint folders (safetensors + a weights-only state file).
- ``engine``: model, loss, Mixup, AMP, the evaluation pass, params / MACs.
"""
