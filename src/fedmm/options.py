"""`opt`: a configuration field with its one-line description, the form every config dataclass uses.

The description is the field's metadata (`{"help": ...}`), which `fedmm config --help` prints beside each option;
a list or dict default is copied for every instance, as `default_factory` would."""

from __future__ import annotations

import copy
from dataclasses import Field, field
from typing import Any


def opt(default: Any, help: str) -> Any:
    """A dataclass field holding `default` and described by `help`."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def description(f: Field) -> str:
    """A field's one-line description ("" when it has none)."""
    return str(f.metadata.get("help", "")) if f.metadata else ""
