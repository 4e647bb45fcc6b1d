"""Exceptions that say what is wrong and what would be right."""


class EffnetsError(Exception):
    """Base class of the library's own errors."""


class ConfigError(EffnetsError, ValueError):
    """A name, override or setting that does not exist or is out of range."""


class CheckpointError(EffnetsError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


class InputError(EffnetsError, ValueError):
    """A tensor or image given to a model that it cannot take (rank, channels, size, dtype)."""


class BadImage(EffnetsError, ValueError):
    """A file that is not a usable image (corrupt, truncated, empty, too large, unreadable)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


class DataError(EffnetsError, ValueError):
    """A data set that cannot be used as it is (too many bad files, no usable images)."""


class TrainingError(EffnetsError, RuntimeError):
    """A run that had to stop (non-finite loss, disk full); the message names the last good
    checkpoint.  The CLI exits with ``exit_code`` (1: the run failed, not its usage)."""

    exit_code = 1
