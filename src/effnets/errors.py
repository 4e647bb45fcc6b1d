"""Exceptions that say what is wrong and what would be right."""


class EffnetsError(Exception):
    """Base class of the library's own errors."""


class ConfigError(EffnetsError, ValueError):
    """A name, override or setting that does not exist or is out of range."""


class CheckpointError(EffnetsError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""
