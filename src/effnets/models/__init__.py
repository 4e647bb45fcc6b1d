"""Model families; importing this package registers every model.  Paper numbers live only
in these files."""
from . import efficientnet, mnasnet, mobilenet  # noqa: F401
