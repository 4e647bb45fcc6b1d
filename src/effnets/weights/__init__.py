"""Safe checkpoint reading, key layouts of timm/torchvision, adaptation, loading."""
from .io import read_state_dict
from .layouts import detect_layout, module_order
from .load import adapt_in_chans, load_checkpoint, map_to_model

__all__ = ["read_state_dict", "detect_layout", "module_order", "adapt_in_chans", "load_checkpoint", "map_to_model"]
