"""Model families. Each backend module registers itself in `BACKENDS`."""
from fedmm.backends.base import BACKENDS, Backend  # noqa: F401
from fedmm.backends import fusion as _fusion  # noqa: E402,F401
from fedmm.backends import blip_vqa as _blip_vqa  # noqa: E402,F401
from fedmm.backends import januspro as _januspro  # noqa: E402,F401
from fedmm.backends import hf_vlm as _hf_vlm  # noqa: E402,F401
