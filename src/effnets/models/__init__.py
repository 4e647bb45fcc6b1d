"""Model families; importing this package registers every model.  Paper numbers live only
in these files."""
from . import efficientnet, mnasnet, mobilenet  # noqa: F401
from . import efficientnetv2, resnet_rs  # noqa: F401
from . import coatnet, vit  # noqa: F401
