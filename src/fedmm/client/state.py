"""A client's state across rounds (its error-feedback residual), kept where the client runs.

Files are named by the round that wrote them, and a round reads the newest one written *before* it, keeping that one
until a later round has read past it. So a run killed after a client wrote round r's state but before the server
checkpointed round r repeats round r from exactly the state it first started from: resume stays exact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from fedmm.params import Params, load_params, save_params

_NAME = re.compile(r"^residual-r(\d+)\.safetensors$")


class ClientState:
    def __init__(self, root: Optional[Path]):
        self.root = Path(root) if root is not None else None
        self._memory: dict[int, dict[int, Params]] = {}  # without a folder: cid -> {round: residual}

    def _rounds(self, cid: int) -> dict[int, Path]:
        folder = self.root / f"client_{cid}"
        if not folder.is_dir():
            return {}
        return {int(m.group(1)): p for p in folder.iterdir() if (m := _NAME.match(p.name))}

    def load_residual(self, cid: int, rnd: int) -> Optional[Params]:
        if self.root is None:
            older = {r: v for r, v in self._memory.get(cid, {}).items() if r < rnd}
            return older[max(older)] if older else None
        older = {r: p for r, p in self._rounds(cid).items() if r < rnd}
        return load_params(older[max(older)]) if older else None

    def save_residual(self, cid: int, rnd: int, residual: Params) -> None:
        """Store round `rnd`'s residual; drop those older than the one this round read."""
        if self.root is None:
            kept = self._memory.setdefault(cid, {})
            kept[rnd] = residual
        else:
            save_params(self.root / f"client_{cid}" / f"residual-r{rnd}.safetensors", residual)
            kept = self._rounds(cid)
        read = [r for r in kept if r < rnd]
        for r in [r for r in kept if read and r < max(read)]:
            kept.pop(r) if self.root is None else kept[r].unlink(missing_ok=True)
