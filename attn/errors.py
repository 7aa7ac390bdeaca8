"""User-facing errors: each carries one sentence that names the file, key or path and what is valid.

The CLI prints ``error: <message>`` and exits with :attr:`exit_code`; no traceback is shown for these.
"""


class AttnError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""

    exit_code = 1


class ConfigError(AttnError):
    """A bad experiment file, override or option combination (exit code 2, like argparse)."""

    exit_code = 2


class DataError(AttnError):
    """A missing, unreadable or corrupt dataset file."""


class CheckpointError(AttnError):
    """A missing, unreadable or incompatible checkpoint."""


class TrackingError(AttnError):
    """The MLflow tracking store cannot be reached or used."""


class TrainingDiverged(AttnError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class Interrupted(AttnError):
    """The run was stopped (Ctrl-C, SIGTERM) before it finished; its last checkpoint is kept."""

    exit_code = 130
