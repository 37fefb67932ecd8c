"""What a config's data is like without loading it, and the knob values that are meaningless on that data.

The sizes come from a small table of the built-in data sets (``digits`` is sklearn's 8x8 digits split
1,437 train / 360 test; CIFAR and Tiny-ImageNet have their published sizes); ``data.subset`` replaces the
train size when set. An ``imagefolder`` data set without ``data.subset`` has no known size: nothing that
depends on the size is checked then (loading a folder of images just to count it is not worth a warning).

:func:`config_warnings` lists, one line each, the settings whose value cannot do what the plan means on the
config's own data: a queue or memory bank at least as large as the training set, a batch larger than it,
the margin threshold at its maximum (nothing can pass it).
"""

from __future__ import annotations

from kdlab.experiment.schema import ExperimentConfig

__all__ = ["TRAIN_SIZES", "NUM_CLASSES", "train_size", "num_classes", "config_warnings"]

TRAIN_SIZES = {"digits": 1437, "cifar10": 50000, "cifar100": 50000, "tiny-imagenet": 100000}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "tiny-imagenet": 200}


def train_size(cfg: ExperimentConfig) -> int | None:
    """Training images the config trains on: ``data.subset`` when set, else the data set's train size."""
    full = TRAIN_SIZES.get(cfg.data.name)
    if cfg.data.subset is None:
        return full
    return min(cfg.data.subset, full) if full is not None else cfg.data.subset


def num_classes(cfg: ExperimentConfig) -> int | None:
    return NUM_CLASSES.get(cfg.data.name)


def config_warnings(cfg: ExperimentConfig) -> list[str]:
    """One line per setting of ``cfg`` that is meaningless on its data (empty when all is well)."""
    out: list[str] = []
    obj, dist = cfg.objective, cfg.distill
    intra_used = obj.kind == "intra"
    if intra_used and obj.intra.margin and obj.intra.delta >= 1.0:
        out.append(f"objective.intra.delta={obj.intra.delta:g} is its maximum: no margin p_y - max p_k exceeds 1, "
                   "so no sample passes the margin and the intra-class loss is always 0")
    n = train_size(cfg)
    if n is None:
        return out
    data = f"the {n} training images ({cfg.data.name}{', data.subset' if cfg.data.subset else ''})"
    if cfg.data.batch_size > n:
        out.append(f"data.batch_size={cfg.data.batch_size} > {data}: training drops the last partial batch, "
                   "so an epoch has no step and the run fails")
    if "cocord" in dist.methods:
        k = dist.cocord.queue_size
        if dist.cocord.memory == "queue" and k >= n:
            out.append(f"distill.cocord.queue_size={k} >= {data}: an image meets its own earlier key in the queue, "
                       "and keys not yet overwritten stay random initial vectors")
        elif dist.cocord.memory == "bank" and k >= n:
            out.append(f"distill.cocord.queue_size={k} negatives per sample >= the memory bank of {data}: "
                       "negatives are drawn with replacement, so they repeat and include the sample itself")
    if "crd" in dist.methods and dist.crd.nce_k >= n:
        out.append(f"distill.crd.nce_k={dist.crd.nce_k} negatives per sample >= the memory bank of {data}: "
                   "negatives are drawn with replacement, so they repeat and include the sample itself")
    classes = num_classes(cfg)
    if intra_used and obj.intra.cache.enabled and classes is not None and obj.intra.cache.size * classes >= n:
        total = obj.intra.cache.size * classes
        out.append(f"objective.intra.cache.size={obj.intra.cache.size} x {classes} classes = {total} cached "
                   f"entries >= {data}: each class's cache holds more entries than the class has images")
    return out
