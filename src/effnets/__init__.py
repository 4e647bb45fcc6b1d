"""effnets: efficient image recognition networks and the science of scaling them."""
from .errors import CheckpointError, ConfigError, EffnetsError
from .factory import create_model, list_overrides
from .optimize import optimize  # imported eagerly so the name stays the function, not the submodule
from .registry import ModelCard, get_spec, list_models, model_card
from .scaling import compound, make_divisible, scale
from .spec import BlockSpec, Conventions, HeadSpec, NetSpec, StageSpec, StemSpec

__version__ = "0.1.0"


def profile(model_or_name, input_size=None, batch_size: int = 1, **kwargs):
    """Params, MACs, FLOPs and activation memory of one forward pass (see effnets.profile)."""
    from .profiling import profile as _profile
    return _profile(model_or_name, input_size=input_size, batch_size=batch_size, **kwargs)


__all__ = ["create_model", "optimize", "list_models", "list_overrides", "model_card", "get_spec", "profile", "compound",
           "scale", "make_divisible", "ModelCard", "NetSpec", "StageSpec", "BlockSpec", "StemSpec", "HeadSpec",
           "Conventions", "EffnetsError", "ConfigError", "CheckpointError", "__version__"]
