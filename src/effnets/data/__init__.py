"""Data: built-in data sets, ImageFolder directories, preprocessing from model cards,
RandAugment/AutoAugment, mixup/cutmix with soft targets."""
from .augment import AutoAugment, RandAugment
from .datasets import (DataSplits, DigitsDataset, FolderDataset, SyntheticDataset, Transformed, UnlabeledFolder,
                       build_eval_set, build_splits)
from .mix import MixUpCutMix, soft_target_cross_entropy, soft_targets
from .transforms import TrainTransform, eval_transform, eval_transform_from_card

__all__ = ["AutoAugment", "RandAugment", "DataSplits", "DigitsDataset", "FolderDataset", "SyntheticDataset",
           "Transformed", "UnlabeledFolder", "build_eval_set", "build_splits", "MixUpCutMix",
           "soft_target_cross_entropy", "soft_targets", "TrainTransform", "eval_transform",
           "eval_transform_from_card"]
