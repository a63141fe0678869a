"""How a command ends on a user's mistake: one ``hierparse: error:`` line per problem, exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from hierparse.hierarchy import HierarchyError

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def print_problems(error: HierarchyError) -> None:
    """One ``hierparse: error:`` line per problem of an invalid hierarchy file."""
    for problem in error.problems:
        print(f"hierparse: error: {problem}", file=sys.stderr)


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``command(args)``; a mistake the user can fix prints one line (no traceback) and returns 2."""
    try:
        return command(args)
    except HierarchyError as error:
        print_problems(error)
        return 2
    except USER_ERRORS as error:
        print(f"hierparse: error: {error}", file=sys.stderr)
        return 2
