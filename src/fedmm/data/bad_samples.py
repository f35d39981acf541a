"""What to do with a sample that cannot be used (a missing or corrupt image, an unknown label): stop, or skip it.

Real data sets have a few broken rows. Stopping is the default because a silently shrinking data set hides problems;
`on_bad_sample=skip` is for when the user has looked and accepts losing those rows. Either way the message names the
file and the row, so the user can fix the source.
"""

from __future__ import annotations

import sys

from fedmm.errors import FedmmError

POLICIES = ("error", "skip")


class BadSamples:
    def __init__(self, policy: str, option: str = "task.on_bad_sample"):
        if policy not in POLICIES:
            raise FedmmError(f"{option} must be error or skip (got '{policy}')")
        self.policy = policy
        self.option = option
        self.skipped: list[str] = []

    def __call__(self, message: str) -> None:
        """Report one bad sample: raise (policy error) or count it (policy skip). The message quotes the data, which
        may hold line breaks: they are escaped, so the report stays one line."""
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        if self.policy == "error":
            raise FedmmError(f"{message}; fix or remove it, or pass {self.option}=skip to skip bad samples")
        self.skipped.append(message)

    def warn(self, where: str) -> None:
        """One warning line for everything skipped so far (nothing when nothing was skipped)."""
        if self.skipped:
            more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
            print(
                f"warning: skipped {len(self.skipped)} bad sample(s) in {where}: {self.skipped[0]}{more}",
                file=sys.stderr,
                flush=True,
            )
