"""Every user-facing error type, in one leaf module that imports nothing of lorabench.

Bad input raises one of ``INPUT_ERRORS`` before any compute is spent; the command line exits
with code 2 for those and prints their one-line message, which names the problem and the fix.
``RunFailed`` is the one error raised after training started (its result JSON says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad run setting. The message names the problem and the fix."""


class VariantError(ValueError):
    """Bad variant name, option or combination. The message names the fix."""


class DataError(ValueError):
    """Missing, malformed or unknown data. The message names the problem and the fix."""


class ReportError(DataError):
    """Results that cannot be reported together (two different runs under one run id)."""


class PromptError(DataError):
    """No prompt for this task, or the task's labels disagree with the label words."""


class ModelError(ValueError):
    """Unknown model, missing package, bad head or layer count. The message names the fix."""


class UsageError(ValueError):
    """A command line argparse could not parse."""


class SweepError(ConfigError):
    """A sweep file or sweep flag is wrong (bad input: exit code 2); the message names the fix."""


class MemoryBudgetError(ConfigError):
    """The memory budget cannot hold even a micro-batch of one example."""


class LaunchError(ConfigError):
    """The rank processes of a data-parallel run stopped on bad input before training."""


class AdapterFileError(VariantError):
    """A missing, corrupt or mismatched adapter file."""


class ResultWriteError(OSError):
    """A result file could not be written (read-only folder, disk full ...); the message names
    the folder and the fix."""


class RunFailed(RuntimeError):
    """Training started and then crashed (status "oom" or "error"); the result JSON says why."""

    def __init__(self, message: str, result: dict[str, Any], path: Path):
        super().__init__(message)
        self.result = result
        self.path = path


#: Exceptions that mean "bad input": exit code 2 on the command line, no result written.
INPUT_ERRORS: tuple[type[BaseException], ...] = (UsageError, ConfigError, VariantError, DataError, ModelError)


def check(condition: bool, message: str) -> None:
    """Raise VariantError(message) unless condition holds (for a variant's ``Options.__post_init__``)."""
    if not condition:
        raise VariantError(message)
