"""The project's own error types.

Every reader raises one of these, with the offending file and the problem in
the message, so that the CLI can print one line and exit non-zero instead of a
traceback from deep inside numpy or torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "M2DetError",
    "UsageError",
    "UnusedOptionError",
    "InputFileError",
    "CheckpointError",
    "BackendUnavailableError",
    "ModelOutputError",
    "OutputFileError",
]



class M2DetError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class UsageError(M2DetError, ValueError):
    """An argument or option value that cannot work (an unknown backend, a
    shard that is not I/N, a size with no preset): bad input, not a bug."""


class UnusedOptionError(UsageError):
    """An option the job would not read (a file the runtime does not load, a setting of another runtime or of
    another mode): refused before any work, so that no record credits it. One line: the option, why it
    would not be read, what to do."""

    def __init__(self, option: str, why: str, fix: str):
        self.option = option
        super().__init__(f"{option}: {why}; {fix}")


class InputFileError(M2DetError, ValueError):
    """A file that is missing, unreadable or not what it should be."""

    def __init__(self, path: Optional[Union[str, "os.PathLike[str]"]], problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class CheckpointError(InputFileError):
    """A checkpoint that cannot be read or does not fit the model."""


class BackendUnavailableError(M2DetError, RuntimeError):
    """A runtime (aclruntime, CUDA, ...) that is not installed or has no device."""


class ModelOutputError(M2DetError, ValueError):
    """A model whose outputs are not the (scores, loc) pair this pipeline expects."""


class OutputFileError(M2DetError, OSError):
    """A file or folder that cannot be written (full disk, no permission, a
    path through a regular file). Also an ``OSError``, with the cause's errno."""

    def __init__(self, path: Optional[Union[str, "os.PathLike[str]"]], problem: str, errno: Optional[int] = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
        self.errno = errno

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.errno)
