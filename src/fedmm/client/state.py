"""A client's state across rounds, kept where the client runs: its error-feedback residual (`residual`), its
personal tensors (`personal`, fedmm.client.personal) and what its strategy keeps between rounds (FedDyn's linear
term, named by the strategy: `LocalRound.load_state`). None of it ever leaves the site.

Files are named by kind and by the round that wrote them, and a round reads the newest one written *before* it,
keeping that one until a later round has read past it. So a run killed after a client wrote round r's state but
before the server checkpointed round r repeats round r from exactly the state it first started from: resume stays
exact. An evaluation after round r reads round r's own state (`through=True`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from fedmm.params import Params, load_params, save_params

_NAME = re.compile(r"^([a-z_]+)-r(\d+)\.safetensors$")


class ClientState:
    def __init__(self, root: Optional[Path]):
        self.root = Path(root) if root is not None else None
        self._memory: dict[tuple[str, int], dict[int, Params]] = {}  # without a folder: (kind, cid) -> {round: state}

    def _rounds(self, kind: str, cid: int) -> dict[int, Path]:
        folder = self.root / f"client_{cid}"
        if not folder.is_dir():
            return {}
        return {int(m.group(2)): p for p in folder.iterdir() if (m := _NAME.match(p.name)) and m.group(1) == kind}

    def load(self, kind: str, cid: int, rnd: int, through: bool = False) -> Optional[Params]:
        """The newest state of `kind` written before round `rnd` (with `through`, by round `rnd` itself too)."""
        last = rnd if through else rnd - 1
        if self.root is None:
            older = {r: v for r, v in self._memory.get((kind, cid), {}).items() if r <= last}
            return older[max(older)] if older else None
        older = {r: p for r, p in self._rounds(kind, cid).items() if r <= last}
        return load_params(older[max(older)]) if older else None

    def save(self, kind: str, cid: int, rnd: int, state: Params) -> None:
        """Store round `rnd`'s state; drop those older than the one this round read."""
        if self.root is None:
            kept = self._memory.setdefault((kind, cid), {})
            kept[rnd] = state
        else:
            save_params(self.root / f"client_{cid}" / f"{kind}-r{rnd}.safetensors", state)
            kept = self._rounds(kind, cid)
        read = [r for r in kept if r < rnd]
        for r in [r for r in kept if read and r < max(read)]:
            kept.pop(r) if self.root is None else kept[r].unlink(missing_ok=True)

    def load_residual(self, cid: int, rnd: int) -> Optional[Params]:
        return self.load("residual", cid, rnd)

    def save_residual(self, cid: int, rnd: int, residual: Params) -> None:
        self.save("residual", cid, rnd, residual)
