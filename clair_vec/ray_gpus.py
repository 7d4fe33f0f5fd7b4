"""How many GPUs each Ray worker or actor asks for: the one ``--gpus auto|yes|no`` rule that
training and bulk indexing share. No torch here: the indexing driver imports it."""

from __future__ import annotations

GPU_CHOICES = ("auto", "yes", "no")


def check_gpu_choice(gpus: str) -> None:
    if gpus not in GPU_CHOICES:
        raise ValueError(f"gpus must be auto, yes or no, got {gpus!r}")


def gpus_each(gpus: str, count: int, noun: str) -> float:
    """1.0 when ``count`` ``noun`` (workers, actors) get a GPU each, else 0.0. ``auto`` uses GPUs
    only when the connected cluster has one for each; ``yes`` refuses a cluster with too few."""
    import ray

    check_gpu_choice(gpus)
    have = ray.cluster_resources().get("GPU", 0)
    if gpus == "yes" and have < count:
        raise ValueError(
            f"{count} GPU {noun} requested but the Ray cluster has {have:g} GPUs; lower --{noun} or pass --gpus no"
        )
    return 1.0 if gpus == "yes" or (gpus == "auto" and have >= count) else 0.0
