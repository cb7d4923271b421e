"""Training: ``fit`` (the one loop every model trains in), ``distributed`` (DDP under torchrun), ``pretrain``
(MP4SR's pretraining phase), ``checkpoint`` (format and integrity) and ``job`` (the train/baseline/pretrain stages'
bodies)."""
