"""What fedmm prints: one flushed line at a time, and quiet third-party libraries (their warnings only)."""

from __future__ import annotations

import logging
import os
import sys


QUIET = False  # `fedmm -q`, and the Python API unless verbose: nothing on stdout
log = logging.getLogger("fedmm")


def say(msg: str = "") -> None:
    """One line of what a run reports: printed (unless QUIET) and always logged to the `fedmm` logger, so that a
    program using the API can collect it."""
    log.info(msg)
    if not QUIET:
        print(msg, flush=True)


def quiet_libraries() -> None:
    """Third-party libraries print their warnings only. Through their environment variables, so that nothing is
    imported here (`fedmm config` never loads transformers); a transformers already loaded is told directly."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
