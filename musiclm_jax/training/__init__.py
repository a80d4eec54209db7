"""The T5X-style training core: models, partitioning, the trainer and its loop, checkpoints,
input pipelines, restoring runs for inference."""
