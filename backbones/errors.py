"""The one exception type for problems a user can fix.

A missing file, a malformed annotation list, a bad config key, a checkpoint of the wrong
architecture: the command-line tools print such an error as one message, without a
traceback, and exit with status 2 (``revvision.cli``). Anything else is a bug and keeps
its traceback. Library code raises a subclass (``CheckpointError``) or ``UserError`` itself,
and the message names the file or key and says what to do.
"""

from typing import List, Tuple


class UserError(Exception):
    """A problem with the user's input (file, path, config, checkpoint), not with revvision."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (the message names the key and what it accepts)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path with no file behind it (a ``FileNotFoundError`` too)."""


class KeyMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped keys; the lists are attributes.

    ``mismatched`` holds ``(key, checkpoint_shape, model_shape)``.
    """

    def __init__(self, message: str, missing: List[str], unexpected: List[str],
                 mismatched: List[Tuple[str, tuple, tuple]]):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
