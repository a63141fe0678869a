"""How a command ends on a user's mistake: one ``hierparse: error:`` line per problem, exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from hierparse.hierarchy import HierarchyError

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def problems_of(error: Exception) -> list[str]:
    """The lines a user reads: a hierarchy's problems or the message, without the traceback that a
    DataLoader worker wraps an error in ("Caught ValueError in DataLoader worker process 0. Original
    Traceback ...": the original message is the end of that traceback)."""
    lines = error.problems if isinstance(error, HierarchyError) else str(error).splitlines()
    if lines and lines[0].startswith("Caught ") and any(line.startswith("Original Traceback") for line in lines):
        name = type(error).__name__
        last = max(i for i, line in enumerate(lines) if line.split(":", 1)[0].split(".")[-1] == name)
        lines = [lines[last].split(": ", 1)[1] if ": " in lines[last] else "", *lines[last + 1:]]
    return lines or [type(error).__name__]


def print_problems(error: Exception) -> None:
    """One ``hierparse: error:`` line per problem (of an invalid hierarchy file, or the message)."""
    for problem in problems_of(error):
        print(f"hierparse: error: {problem}", file=sys.stderr)


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``command(args)``; a mistake the user can fix prints one line (no traceback) and returns 2."""
    try:
        return command(args)
    except USER_ERRORS as error:  # HierarchyError is a ValueError
        print_problems(error)
        return 2
