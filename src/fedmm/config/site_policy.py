"""The site policy: what a site accepts from its coordinator, written by the site's operator and read only there.

A site (a Flower SuperNode, an NVFlare client) receives the run's settings from the server with every round. It
does not apply them as they come: `site_settings` checks them against the site's `SitePolicy` first, before any
module is imported or any file is read, and builds the site's settings from what passes:

- Settings from the network are data: YAML parsed with the safe loader, and any `${...}` (OmegaConf's
  interpolations and resolvers, `${oc.env:...}` among them) is refused, never resolved.
- Paths and folders are the site's: every site-owned option (`site_owned`: task data paths, cache folders, any
  field whose name says path, root, dir, file, folder or uri) must arrive empty (fedmm's server clears them, see
  `for_sites`) and takes the site's own value from its policy. The server cannot name a file of the site, so every
  count a site reports is of its own data.
- Code is the site's: only the `plugins` its policy lists are imported; model weights from a local path only when
  its policy lists that path (`models`); hub ids and fedmm's packaged models are accepted.
- Limits: rounds, local epochs, the backends and strategies it runs, whether it takes part in client_eval.

A refusal is a `SiteRefusal` with a fixed code and a message fedmm wrote (the key it concerns, never a value the
site read), which the server records as that client's failure. Without a policy file the defaults hold: model,
strategy and training options are accepted; paths, plugins, local model folders and resolvers never are.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

import yaml

from fedmm.errors import FedmmError, SiteRefusal
from fedmm.options import opt

POLICY_ENV = "FEDMM_SITE_POLICY"  # a policy file's path, for sites whose runtime has no setting for it
MAX_SETTINGS_BYTES = 1 << 20  # a run's settings are a few KiB; a larger message is refused unread
MAX_NODES = 100_000  # values in the parsed settings (a YAML alias bomb stops here)
# Run-level keys only the server uses: the site resets them to their defaults, whatever arrives.
SERVER_ONLY = ("output_dir", "resume", "tracking", "launcher")
# Option names that hold a path on the machine that reads them: site-owned wherever they appear.
PATH_NAME = re.compile(r"(^|_)(path|paths|root|dir|folder|file|json|uri|dataset|workspace)$")
# Options that name model weights: a hub id or packaged name is accepted, a local path only when the policy lists it.
MODEL_SOURCES = ("pretrained", "text_encoder", "image_encoder", "tokenizer")


@dataclass
class DataPaths:
    """Where this site's data is: each field is the task option of the same name (a task reads those it has)."""

    root: str = opt("", "task.root: the site's data folder (MM-IMDb, easy-VQA, VQA v2, task=table per-site folders)")
    path: str = opt("", "task.path: the site's one table file (task=table)")
    val_path: str = opt("", "task.val_path")
    test_path: str = opt("", "task.test_path")
    dataset: str = opt("", "task.dataset: a Hugging Face dataset folder or name")
    image_dir: str = opt("", "task.image_dir (MM-IMDb's posters, when not beside the tables)")
    labels_json: str = opt("", "task.labels_json (MM-IMDb's label list, when not its 23 genres)")


@dataclass
class SitePolicy:
    """A site's own rules for what it runs and what leaves it (site.yaml)."""

    data: DataPaths = field(default_factory=DataPaths)
    cache_dir: str = opt("", 'model.cache_dir on this site ("" = $FEDMM_CACHE, else ~/.cache/fedmm)')
    state_dir: str = opt("", 'where this site keeps its clients\' state ("" = ~/.fedmm/<runtime>-state)')
    plugins: List[str] = opt([], "modules the server may ask this site to import (nothing else is imported)")
    models: List[str] = opt(
        [],
        "local model folders or files the server may name (glob patterns); hub ids and packaged models are always "
        "accepted",
    )
    backends: List[str] = opt([], "the model backends this site runs ([] = any)")
    strategies: List[str] = opt([], "the strategies whose client side this site runs ([] = any)")
    max_rounds: Optional[int] = opt(None, "the most rounds this site takes part in (null = no limit)")
    max_local_epochs: Optional[int] = opt(None, "the most local epochs a round may ask (null = no limit)")
    client_eval: bool = opt(True, "whether this site scores models on its own test data when the server asks")

    def value_for(self, key: str) -> Any:
        """The site's own value for a site-owned option ("" when the policy sets none)."""
        group, _, name = key.partition(".")
        if key == "model.cache_dir":
            return self.cache_dir
        return getattr(self.data, name, "") if group == "task" else ""


def load_policy(path: Optional[str] = None, **site_config: Any) -> SitePolicy:
    """The policy in `path` (site.yaml; none: the defaults). `data-root` and `state-dir` of a Flower node config
    or an NVFlare client's arguments fill what the file leaves empty: the file wins (an NVFlare job's arguments are
    written by whoever exported the job)."""
    policy = SitePolicy()
    if path:
        file = Path(str(path)).expanduser()
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise FedmmError(f"site policy {file}: cannot be read ({type(e).__name__}); fix the file") from None
        policy = _typed_policy(raw if raw is not None else {}, file)
    if site_config.get("data-root") and not policy.data.root:
        policy.data.root = str(site_config["data-root"])
    if site_config.get("state-dir") and not policy.state_dir:
        policy.state_dir = str(site_config["state-dir"])
    return policy


def _typed_policy(raw: Any, file: Path) -> SitePolicy:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(raw, dict):
        raise FedmmError(f"site policy {file}: must be a mapping of options (see `fedmm site --help`)")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SitePolicy), raw))
    except OmegaConfBaseException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FedmmError(f"site policy {file}: {first}; valid options: {', '.join(_policy_keys())}") from None


def _policy_keys() -> list[str]:
    return [f.name for f in fields(SitePolicy)]


def site_owned(name: str) -> bool:
    """Whether an option of this name holds a path: the one rule for what a server may never set on a site."""
    return bool(PATH_NAME.search(name))


def is_local_path(value: str) -> bool:
    """A model source that names something on the site's disk, as opposed to a hub id (`org/name`) or a packaged
    model name: absolute, home-relative, relative with a dot, a backslash, or a file name with an extension."""
    v = value.strip()
    return bool(v) and (
        v.startswith(("/", "~", ".", "\\"))
        or "\\" in v
        or ".." in v.split("/")
        or v.count("/") > 1
        or bool(re.search(r"\.(pth|pt|bin|safetensors|ckpt|json|onnx)$", v))
        or Path(v).exists()
    )


def _text_values(node: Any, where: str, budget: list[int]) -> None:
    """Refuse any `${` in a key or a string value, walking the parsed settings (at most MAX_NODES values)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise SiteRefusal("bad_request", f"the settings hold more than {MAX_NODES} values")
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str) or "${" in k:
                raise SiteRefusal("bad_request", "the settings have a key that is not a plain name")
            _text_values(v, f"{where}{k}.", budget)
    elif isinstance(node, list):
        for v in node:
            _text_values(v, where, budget)
    elif isinstance(node, str) and "${" in node:
        raise SiteRefusal(
            "interpolation",
            f"{where[:-1] or 'a value'} holds an interpolation (${{...}}); settings from the server are never resolved",
        )


def parse_server_settings(text: Any) -> dict[str, Any]:
    """The server's settings as plain data: YAML (safe loader) of at most MAX_SETTINGS_BYTES, a mapping, with no
    `${...}` anywhere. Nothing is imported, resolved or read."""
    if not isinstance(text, str) or len(text.encode("utf-8", "replace")) > MAX_SETTINGS_BYTES:
        raise SiteRefusal("bad_request", "the settings are not a YAML text of at most 1 MiB")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SiteRefusal("bad_request", "the settings are not valid YAML") from None
    if not isinstance(raw, dict):
        raise SiteRefusal("bad_request", "the settings are not a mapping of options")
    _text_values(raw, "", [MAX_NODES])
    return raw


def _group_config(group: str, node: Any) -> type:
    from fedmm.config.load import GROUPS

    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        raise SiteRefusal("bad_request", f"{group} has no name")
    registry = GROUPS[group]
    if node["name"] not in registry:
        raise SiteRefusal("not_allowed", f"{group} '{node['name'][:60]}' is not known at this site")
    return registry.get(node["name"]).config_cls


def _default(cls: type, name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return None


def _allowed(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def apply_policy(raw: dict[str, Any], policy: SitePolicy) -> dict[str, Any]:
    """The server's parsed settings as this site runs them, or a `SiteRefusal`: plugins and model sources checked
    against the policy, site-owned options taken from it (a value from the server refused), server-only options
    reset, limits enforced. Imports nothing but the plugins the policy allows (to know their components)."""
    from fedmm.registry import load_plugins

    plugins = raw.get("plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SiteRefusal("bad_request", "plugins is not a list of module names")
    refused = [p for p in plugins if p not in policy.plugins]
    if refused:
        raise SiteRefusal(
            "plugin",
            f"plugin '{refused[0][:80]}' is not in this site's policy (plugins); the site imports only the modules "
            f"its operator lists",
        )
    try:
        load_plugins(plugins)
    except FedmmError:
        raise SiteRefusal("plugin", f"a plugin this site allows cannot be imported here ({plugins[0][:80]})") from None
    out = dict(raw)
    for key in SERVER_ONLY:
        out.pop(key, None)
    for group in ("task", "model", "strategy", "runtime"):
        node = dict(out.get(group) or {})
        cls = _group_config(group, node)
        for f in fields(cls):
            key = f"{group}.{f.name}"
            if site_owned(f.name):
                sent = node.get(f.name, _default(cls, f.name))
                if sent not in (None, "", _default(cls, f.name)):
                    raise SiteRefusal(
                        "site_owned",
                        f"{key} is this site's to set, not the server's; the site reads its own from its policy",
                    )
                own = policy.value_for(key)
                if own:
                    node[f.name] = own
            elif group == "model" and f.name in MODEL_SOURCES:
                value = node.get(f.name)
                if isinstance(value, str) and is_local_path(value) and not _allowed(value, policy.models):
                    raise SiteRefusal(
                        "not_allowed",
                        f"{key} names a local path that this site's policy does not list (models)",
                    )
        out[group] = node
    model, strategy = out["model"]["name"], out["strategy"]["name"]
    if policy.backends and model not in policy.backends:
        raise SiteRefusal("not_allowed", f"model '{model}' is not among this site's backends")
    if policy.strategies and strategy not in policy.strategies:
        raise SiteRefusal("not_allowed", f"strategy '{strategy}' is not among this site's strategies")
    rounds = out.get("rounds")
    if policy.max_rounds is not None and isinstance(rounds, int) and rounds > policy.max_rounds:
        raise SiteRefusal("limit", f"rounds={rounds} is over this site's max_rounds={policy.max_rounds}")
    check_epochs(out.get("local_epochs"), policy, "local_epochs")
    return out


def check_epochs(value: Any, policy: SitePolicy, key: str) -> None:
    if policy.max_local_epochs is not None and isinstance(value, int) and value > policy.max_local_epochs:
        raise SiteRefusal("limit", f"{key}={value} is over this site's max_local_epochs={policy.max_local_epochs}")


def for_sites(settings_yaml: str) -> str:
    """What a server sends its sites: the run's config.yaml without the server-only options and with every
    site-owned option cleared (the sites take theirs from their policies)."""
    raw = yaml.safe_load(settings_yaml)
    for key in SERVER_ONLY:
        raw.pop(key, None)
    for group in ("task", "model", "strategy", "runtime"):
        node = raw.get(group) or {}
        cls = _group_config(group, node)
        for f in fields(cls):
            if site_owned(f.name) and f.name in node:
                node[f.name] = _default(cls, f.name)
    return yaml.safe_dump(raw, sort_keys=False)


def describe_policy(policy: SitePolicy) -> str:
    """Every option of `policy` with its value and description: what `fedmm site` prints."""
    from fedmm.options import description

    rows = []
    for f in fields(SitePolicy):
        value = getattr(policy, f.name)
        if f.name == "data":
            rows += [(f"data.{g.name}={getattr(value, g.name)}", description(g)) for g in fields(DataPaths)]
        else:
            rows.append((f"{f.name}={'null' if value is None else value}", description(f)))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{d}" for k, d in rows) + "\n"


def try_settings(config_yaml: str, policy: SitePolicy) -> str:
    """Whether this site takes a run's config.yaml as its server would send it: 'accepted', or the refusal."""
    from fedmm.config.load import validate_site

    try:
        validate_site(apply_policy(parse_server_settings(for_sites(config_yaml)), policy))
    except SiteRefusal as e:
        return f"refused ({e.code}): {e.message}"
    return "accepted"


def simulation_policy(settings: Any) -> SitePolicy:
    """The policy fedmm gives the sites of a simulation it starts on this machine: they are the run's own, so they
    take the run's data paths, cache folder, plugins and model sources (what `for_sites` cleared comes back)."""
    task, model = settings.cfg.task, settings.cfg.model
    data = DataPaths(**{f.name: str(task.get(f.name, "") or "") for f in fields(DataPaths)})
    models = [str(model[k]) for k in MODEL_SOURCES if isinstance(model.get(k), str) and model.get(k)]
    return SitePolicy(
        data=data,
        cache_dir=str(model.get("cache_dir", "") or ""),
        plugins=[str(p) for p in settings.cfg.get("plugins") or []],
        models=models,
    )


def write_policy(policy: SitePolicy, path: Path) -> Path:
    from dataclasses import asdict

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(asdict(policy), sort_keys=False))
    return path
