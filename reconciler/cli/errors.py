"""What a command face reports to its caller: one-line errors and the exit codes.

Exit codes, for scripts and CI:
  0  success (for `plan`: no changes)
  1  error: invalid input, unreadable files, a failed operation
  2  `plan` only: there are changes
  3  `apply`/`reconcile`/`rollback`: degraded (the standby was unreachable)
  64 usage errors (unknown option, missing argument), as argparse reports them
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DEGRADED = 3
EXIT_USAGE = 64


class CommandError(Exception):
    """A failure to report to the user as one clear message, with exit code 1."""
