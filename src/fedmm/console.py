"""What fedmm prints: one flushed line at a time, and quiet third-party libraries (their warnings only)."""

from __future__ import annotations

import logging
import os


QUIET = False  # `fedmm -q`, and the Python API unless verbose: nothing on stdout
log = logging.getLogger("fedmm")


def say(msg: str = "") -> None:
    """One line of what a run reports: printed (unless QUIET) and always logged to the `fedmm` logger, so that a
    program using the API can collect it."""
    log.info(msg)
    if not QUIET:
        print(msg, flush=True)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
