"""Training engine: recipes, the loop, optimisers, schedules, EMA, progressive learning,
checkpoints, distributed training, teacher pseudo-labels, logs."""
from .ema import ModelEma
from .loop import FitResult, evaluate, fit
from .optim import RMSpropTF, build_optimizer, param_groups
from .progressive import ProgressiveSchedule
from .recipe import Recipe, load_recipe, recipe_names
from .schedule import LRSchedule

__all__ = ["fit", "evaluate", "FitResult", "Recipe", "load_recipe", "recipe_names", "ModelEma", "RMSpropTF",
           "build_optimizer", "param_groups", "ProgressiveSchedule", "LRSchedule"]
