"""The one exception type for problems a user can fix.

A missing file, a malformed annotation list, a bad config key, a checkpoint of the wrong
architecture: the command-line tools print such an error as one message, without a
traceback, and exit with status 2 (``revvision.cli``). Anything else is a bug and keeps
its traceback. Library code raises a subclass (``CheckpointError``) or ``UserError`` itself,
and the message names the file or key and says what to do.
"""


class UserError(Exception):
    """A problem with the user's input (file, path, config, checkpoint), not with revvision."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (the message names the key and what it accepts)."""
