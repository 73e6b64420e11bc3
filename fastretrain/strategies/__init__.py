"""One module per method; importing this package registers them all."""
from . import freeze_unfreeze, linear_probe  # noqa: F401
