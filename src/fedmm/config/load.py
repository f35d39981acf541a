"""Compose a configuration from the shipped groups and `key=value` overrides, expand `-m` sweeps, validate.

Hydra's own `@hydra.main` is not used: it owns the process (working directory, logging, multi-line errors). We use
its composition API and override grammar, so every Hydra override (`+key=`, `~key`, group choices, sweeps such as
`a=1,2`, `range(1,4)`) works, and turn every problem into one line.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fedmm.config.schema import (
    ATTACKS,
    BOUNDS,
    CLIENT_EVAL,
    NORM_BOUNDS,
    PARTITIONS,
    PERSONALIZE,
    PRECISIONS,
    PRIVACY,
    PRIVACY_MODES,
    SELECT_MODES,
    TRACKERS,
    AttackConfig,
    LauncherConfig,
    PartitionConfig,
    PersonalizeConfig,
    PrivacyConfig,
    Schema,
)
from fedmm.errors import FedmmError
from fedmm.rundir import check_output_dir
from fedmm.registry import BACKENDS, RUNTIMES, STRATEGIES, TASKS, load_plugins
from fedmm.schedule import LR_SCHEDULES

GROUPS = {"task": TASKS, "model": BACKENDS, "strategy": STRATEGIES, "runtime": RUNTIMES}
PRESETS = Path(__file__).resolve().parent.parent / "presets"
# run-level groups with presets, one schema each
RUN_GROUPS = {
    "partition": PartitionConfig,
    "attack": AttackConfig,
    "privacy": PrivacyConfig,
    "personalize": PersonalizeConfig,
    "launcher": LauncherConfig,
}
OPTION_GROUPS = (*GROUPS, *RUN_GROUPS, "experiment")  # groups chosen with group=option
# What a resumed run may change: how long and how it reports, never what it computes per round.
RESUMABLE = {
    "rounds",
    "early_stop",
    "eval_every",
    "eval_batch_size",
    "keep_checkpoints",
    "threads",
    "progress",
    "tracking",
}


@dataclass
class Settings:
    """A validated configuration: `cfg` (a DictConfig, saved as config.yaml) plus typed group objects."""

    cfg: DictConfig
    task: Any
    model: Any
    strategy: Any
    runtime: Any

    def __getattr__(self, name: str) -> Any:  # run-level keys: settings.rounds, settings.partition.alpha, ...
        if name == "cfg":  # not yet set (copying, unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.cfg, name)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.cfg, resolve=True)

    def typed(self, key: str, cls: type) -> Any:
        """A run-level node (compression, attack, ...) as its dataclass."""
        return cls(**OmegaConf.to_container(self.cfg[key], resolve=True))


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested configuration (dicts) as `a.b` -> value; lists stay values."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def identity(settings: Settings) -> dict[str, Any]:
    """The settings that define what the experiment computes (all but how long it runs and how it reports), flat
    as dotted keys: stored in every checkpoint, and what a resume must match."""
    skip = RESUMABLE | {"resume", "output_dir", "launcher"}
    return {
        k: v for k, v in flat(OmegaConf.to_container(settings.cfg, resolve=True)).items() if k.split(".")[0] not in skip
    }


def _schema_for(group: str, name: str) -> type:
    return RUN_GROUPS[group] if group in RUN_GROUPS else GROUPS[group].get(name).config_cls


def _register_store() -> None:
    """Put every group option into Hydra's ConfigStore as a *typed* node (its dataclass with the preset's values),
    so `model.fusion_dim=big` or `task.nosuch=1` fail at composition, whichever option is chosen. Options are the
    YAML presets in fedmm/presets/<group>/ plus every registered name without a preset."""
    cs = ConfigStore.instance()
    cs.store(name="fedmm_schema", node=Schema)
    for path in sorted((PRESETS / "experiment").glob("*.yaml")):  # whole-run presets, validated once composed
        node = OmegaConf.load(path)
        node.pop("sweep", None)  # what `-m` expands (see experiment_sweep), not a setting
        cs.store(group="experiment", name=path.stem, node=node, package="_global_")
    for path in sorted((PRESETS / "task_defaults").glob("*.yaml")):  # what the default job adds to a task
        cs.store(group="task_defaults", name=path.stem, node=OmegaConf.load(path), package="_global_")
    for group in (*GROUPS, *RUN_GROUPS):
        names = {p.stem: p for p in sorted((PRESETS / group).glob("*.yaml"))}
        if group in GROUPS:
            names.update({n: None for n in GROUPS[group].names() if n not in names})
        for option, path in names.items():
            node = OmegaConf.load(path) if path else OmegaConf.create({"name": option})
            schema = _schema_for(group, str(node.get("name", option)))
            try:
                typed = OmegaConf.merge(OmegaConf.structured(schema), node)
            except OmegaConfBaseException as e:
                raise FedmmError(f"preset {group}/{option}: {_one_line(e)}") from None
            for key, f in schema.__dataclass_fields__.items():  # free-form mappings (`model.text_config={a:1}`)
                if str(f.type).startswith(("Dict", "dict")):  # take new keys, as a typed node would refuse them
                    OmegaConf.set_struct(typed[key], False)
            cs.store(group=group, name=option, node=typed)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip()
    cause = e.__cause__
    m = re.match(r"Error merging override (\S+?)=", msg)
    if m and cause is not None:  # say why: Hydra's own message names only the override
        why = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return f"bad value for '{m.group(1)}': {why}"
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        return f"unknown option '{m.group(1)}'; `fedmm config` prints every option"
    m = re.search(r"Could not find '([^/']+)/([^']+)'", msg)
    if m and m.group(1) in OPTION_GROUPS:
        group = m.group(1)
        return f"unknown {group} '{m.group(2)}'; choose one of: {', '.join(available(group))}"
    m = re.search(r"Ambiguous value for argument '([^']+)'", msg)
    if m or ("sweep" in msg.lower() and "compose" in msg.lower()):
        what = f"'{m.group(1)}' is" if m else "a comma-separated value is"
        return f"{what} a sweep: add -m to run one job per value, or write a list as key=[a,b]"
    lines = [
        l.strip()
        for l in msg.splitlines()
        if l.strip() and not l.strip().startswith(("full_key", "object_type", "reference_type", "Set the environment"))
    ]
    return " ".join(lines)[:300] or type(e).__name__


def available(group: str) -> list[str]:
    yaml = {p.stem for p in (PRESETS / group).glob("*.yaml")}
    return sorted(yaml | set(GROUPS[group].names() if group in GROUPS else []))


def _typed(group: str, node: Any) -> Any:
    if not isinstance(node, DictConfig) or "name" not in node:
        raise FedmmError(f"{group} needs a 'name'; choose one of: {', '.join(available(group))}")
    entry = GROUPS[group].get(str(node.name))
    fields = entry.config_cls.__dataclass_fields__
    unknown = [k for k in node.keys() if k not in fields]
    if unknown:  # `+model.x=1` opens the struct flag, so check by hand
        raise FedmmError(
            f"unknown option '{group}.{unknown[0]}' for {group} '{node.name}'; valid: "
            f"{', '.join(f for f in fields if f != 'name')}"
        )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(entry.config_cls), node))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise FedmmError(f"bad value for '{group}.{key}': {str(e).strip().splitlines()[0]}") from None


def validate(cfg: DictConfig) -> Settings:
    defaults = OmegaConf.structured(Schema)
    with open_dict(cfg):  # a run saved by an older fedmm lacks newer run-level keys: they take their defaults
        for key in defaults.keys():
            if key not in cfg and key not in GROUPS:
                cfg[key] = defaults[key]
    try:
        OmegaConf.resolve(cfg)
        OmegaConf.merge(
            OmegaConf.structured(Schema), OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k not in GROUPS])
        )
    except OmegaConfBaseException as e:
        raise FedmmError(_one_line(e)) from None
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise FedmmError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)} (got '{cfg.lr_schedule}')")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise FedmmError(f"optimizer must be adamw or sgd (got '{cfg.optimizer}')")
    if cfg.precision not in PRECISIONS:
        raise FedmmError(f"precision must be one of {', '.join(PRECISIONS)} (got '{cfg.precision}')")
    if cfg.client_eval not in CLIENT_EVAL:
        raise FedmmError(f"client_eval must be one of {', '.join(CLIENT_EVAL)} (got '{cfg.client_eval}')")
    if cfg.select_mode not in SELECT_MODES:
        raise FedmmError(f"select_mode must be one of {', '.join(SELECT_MODES)} (got '{cfg.select_mode}')")
    if cfg.early_stop.patience and not cfg.select_best:
        raise FedmmError("early_stop.patience needs select_best (the figure whose improvement it waits for)")
    if cfg.partition.name not in PARTITIONS:
        raise FedmmError(f"unknown partition '{cfg.partition.name}'; choose one of: {', '.join(PARTITIONS)}")
    if cfg.personalize.name not in PERSONALIZE:
        raise FedmmError(f"unknown personalize '{cfg.personalize.name}'; choose one of: {', '.join(PERSONALIZE)}")
    _check_bounds(cfg)
    _check_trust(cfg)
    _check_tools(cfg)
    if cfg.output_dir:
        check_output_dir(Path(str(cfg.output_dir)))
    return Settings(cfg=cfg, **{g: _typed(g, cfg.get(g)) for g in GROUPS})


def _check_tools(cfg: DictConfig) -> None:
    """Known trackers whose libraries are installed, and a launcher that can start: checked before anything runs
    (libraries found, not imported)."""
    import importlib.util

    if cfg.launcher.cluster not in ("slurm", "local"):
        raise FedmmError(f"launcher.cluster must be slurm or local (got '{cfg.launcher.cluster}')")
    if cfg.launcher.name == "slurm" and importlib.util.find_spec("submitit") is None:
        raise FedmmError("launcher=slurm needs submitit: pip install 'fedmm[slurm]'")
    if cfg.launcher.name == "slurm" and cfg.launcher.cluster == "slurm" and shutil.which("sbatch") is None:
        raise FedmmError(
            "launcher=slurm needs Slurm's sbatch on PATH: start the sweep on a login node of the cluster "
            "(launcher.cluster=local tries the same submission on this machine)"
        )
    for name in cfg.tracking.to:
        if name not in TRACKERS:
            raise FedmmError(f"unknown tracker '{name}' in tracking; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise FedmmError(f"tracking={name} needs the {name} package: pip install 'fedmm[tracking]'")


def _check_bounds(cfg: DictConfig) -> None:
    for key, bound in BOUNDS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not bound.holds(float(value)):
            raise FedmmError(f"{key}={value} is out of range: it must be {bound.text(isinstance(value, int))}")


def _check_trust(cfg: DictConfig) -> None:
    bound = cfg.max_update_norm
    if bound is not None and bound != "auto":
        try:
            ok = math.isfinite(float(bound)) and float(bound) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise FedmmError(f"max_update_norm must be null, auto or a positive number (got '{bound}')")
    if cfg.norm_bound not in NORM_BOUNDS:
        raise FedmmError(f"norm_bound must be one of {', '.join(NORM_BOUNDS)} (got '{cfg.norm_bound}')")
    a = cfg.attack
    if a.name not in ATTACKS:
        raise FedmmError(f"unknown attack '{a.name}'; choose one of: {', '.join(ATTACKS)}")
    if a.name != "none" and not a.clients:
        raise FedmmError(f"attack={a.name} needs attack.clients=[ids], the clients that misbehave")
    _check_privacy(cfg)


def _check_privacy(cfg: DictConfig) -> None:
    """What client-level DP and secure aggregation cannot be combined with, refused before anything runs."""
    p = cfg.privacy
    if p.name not in PRIVACY:
        raise FedmmError(f"unknown privacy '{p.name}'; choose one of: {', '.join(PRIVACY)}")
    if p.mode not in PRIVACY_MODES:
        raise FedmmError(f"privacy.mode must be one of {', '.join(PRIVACY_MODES)} (got '{p.mode}')")
    if p.name == "none" and not p.secure_aggregation:
        return
    what = "privacy=dp" if p.name == "dp" else "privacy.secure_aggregation=true"
    strategy = cfg.strategy.name
    if not getattr(STRATEGIES.get(strategy).factory, "averages", False):
        usable = ", ".join(n for n in STRATEGIES.names() if getattr(STRATEGIES.get(n).factory, "averages", False))
        raise FedmmError(
            f"strategy={strategy} does not work with {what}: it needs each client's update, which "
            f"{'DP noise and clipping hide' if p.name == 'dp' else 'secure aggregation never shows'};"
            f" use one that averages: {usable}"
        )
    if cfg.max_update_norm is not None:
        raise FedmmError(
            f"max_update_norm does not work with {what}: "
            + (
                "privacy.clip_norm bounds every update already"
                if p.name == "dp"
                else "the server never sees an update to bound"
            )
            + "; remove max_update_norm"
        )
    if not p.secure_aggregation:
        return
    if cfg.runtime.name != "flower":
        raise FedmmError(
            f"privacy.secure_aggregation=true needs runtime=flower (Flower's SecAgg+); "
            f"runtime={cfg.runtime.name} has no secure aggregation: use runtime=flower, or "
            f"privacy=dp privacy.mode=central on a server you trust"
        )
    if p.name == "dp" and p.mode == "central":
        raise FedmmError(
            "privacy.mode=central needs the server to see each update, which secure aggregation "
            "prevents; use privacy.mode=local (each client adds its share of the noise)"
        )
    if getattr(cfg.strategy, "weight_by", "examples") != "examples":
        raise FedmmError(
            "strategy.weight_by=steps does not work with secure aggregation (SecAgg+ masks each update with its "
            "example count as weight); use strategy.weight_by=examples"
        )
    if cfg.compression.kind != "none":
        raise FedmmError(
            f"compression.kind={cfg.compression.kind} does not work with secure aggregation (it "
            f"quantizes the update itself); use compression.kind=none"
        )
    if cfg.attack.name != "none":
        raise FedmmError(
            "attack options do not work with secure aggregation (the server cannot see who misbehaves); use attack=none"
        )


def compose_config(overrides: list[str]) -> DictConfig:
    for o in _parse(overrides):  # Hydra reads `group=[a,b]` as several options of one group (and crashes on [0])
        if o.key_or_group in OPTION_GROUPS and isinstance(o.value(), (list, dict)) and not o.is_sweep_override():
            raise FedmmError(
                f"{o.key_or_group} takes one option name, e.g. {o.key_or_group}=NAME (got "
                f"{o.input_line.partition('=')[2]}); `fedmm config` lists the options"
            )
    _register_store()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="fedmm.conf", version_base=None):
            return compose(config_name="config", overrides=_quote_choices(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise FedmmError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _quote_choices(overrides: list[str]) -> list[str]:
    """`attack=nan` chooses the preset named nan: quoted, so that Hydra does not read a float (nan, inf).
    `tracking=[a,b]` is short for `tracking.to=[a,b]`. A Hugging Face split string (`task.eval_split=
    validation[:50%]`) is quoted too, so that Hydra does not read a list."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in OPTION_GROUPS and value.lower() in ("nan", "inf", "-inf"):
            o = f"{key}='{value}'"
        elif key == "tracking" and value.startswith("["):
            o = f"tracking.to={value}"
        elif key.endswith("split") and "[" in value and value[:1] not in ("'", '"'):
            o = f"{key}='{value}'"
        out.append(o)
    return out


def _parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides=_quote_choices(overrides))
    except HydraException as e:
        raise FedmmError(_one_line(e)) from None


def experiment_sweep(overrides: list[str]) -> list[str]:
    """The sweep an `experiment=NAME` preset declares (its `sweep:` mapping, e.g. a paper's grid) as `key=a,b`
    overrides, for the keys the user did not set (a `key=value` of the user's replaces that axis). The preset's own
    `defaults` are followed, so a preset built on a sweeping one sweeps too."""
    chosen = [o.value() for o in _parse(overrides) if o.key_or_group == "experiment" and not o.is_sweep_override()]
    if not chosen:
        return []
    axes: dict[str, list] = {}
    pending = [str(chosen[-1])]
    while pending:
        path = PRESETS / "experiment" / f"{pending.pop()}.yaml"
        if not path.is_file():
            return []  # composition reports the unknown experiment
        node = OmegaConf.load(path)
        for key, values in (node.get("sweep") or {}).items():
            axes.setdefault(str(key), list(values))
        pending += [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    user = {o.key_or_group for o in _parse(overrides)}
    return [f"{k}={','.join(str(v) for v in vals)}" for k, vals in axes.items() if k not in user]


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of every sweep override (`a=1,2 b=x,y` -> 4 override lists), in Hydra's order, after
    the sweep the chosen experiment preset declares."""
    axes = []
    for o in _parse(experiment_sweep(overrides) + list(overrides)):
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            if not axes[-1]:
                raise FedmmError(f"'{o.input_line}' sweeps over no values; give at least one (e.g. range(1,4))")
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def saved_config(run_dir: Path, overrides: list[str], allowed: Any, verb: str, why: str) -> DictConfig:
    """A run's config.yaml with `overrides` of the `allowed` top-level keys applied (`verb`: resume, evaluate;
    `why` ends the refusal of any other key): what resume and `fedmm evaluate` start from."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FedmmError(f"cannot {verb}: {path} not found; give a run directory written by `fedmm run`")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML's own errors are many; one line names the file and the problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FedmmError(f"cannot {verb}: {path} is not valid YAML ({first[:120]}); restore it") from None
    if not isinstance(cfg, DictConfig):
        raise FedmmError(f"cannot {verb}: {path} does not hold a fedmm configuration; restore it")
    OmegaConf.set_struct(cfg, True)
    for o in _parse(overrides):
        key = o.key_or_group
        if key.split(".")[0] not in allowed or o.is_sweep_override() or o.is_add() or o.is_delete():
            raise FedmmError(f"'{o.input_line}' cannot change when {verb.rstrip('e')}ing: {why}")
        try:
            OmegaConf.update(cfg, key, o.value(), merge=True)
        except OmegaConfBaseException as e:
            raise FedmmError(_one_line(e)) from None
    return cfg


def _resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    cfg = saved_config(
        run_dir,
        [o for o in overrides if o.partition("=")[0] != "resume"],
        RESUMABLE,
        "resume",
        f"it would change the experiment; only {', '.join(sorted(RESUMABLE))} can. Start a new run instead",
    )
    cfg.resume = str(run_dir)
    cfg.output_dir = str(run_dir)
    return cfg


def load_settings(overrides: list[str]) -> Settings:
    for o in _parse(overrides):
        if o.key_or_group == "plugins" and not o.is_sweep_override():
            load_plugins(o.value())
    resume = [o for o in _parse(overrides) if o.key_or_group == "resume" and o.value()]
    if resume:
        cfg = _resume_config(Path(str(resume[-1].value())).expanduser(), overrides)
        load_plugins(cfg.get("plugins"))
        return validate(cfg)
    sweep = experiment_sweep(overrides)
    if sweep:
        raise FedmmError(
            f"this experiment is a sweep over {', '.join(o.split('=')[0] for o in sweep)}: add -m to "
            f"run one job per combination, or set those keys"
        )
    return validate(compose_config(overrides))


def settings_from_yaml(text: str) -> Settings:
    """Settings from a saved config.yaml's text (what a server sends its remote clients)."""
    cfg = OmegaConf.create(text)
    OmegaConf.set_struct(cfg, True)
    load_plugins(cfg.get("plugins"))
    return validate(cfg)


def validate_site(raw: dict[str, Any]) -> Settings:
    """A site's settings: the server's, as plain data after the site's policy (`site_policy.apply_policy`, which
    imported the plugins it allows), validated like any run's. A problem is the site's refusal, in fedmm's words."""
    from fedmm.errors import SiteRefusal

    try:
        cfg = OmegaConf.create(raw)
        OmegaConf.set_struct(cfg, True)
        return validate(cfg)
    except FedmmError as e:
        raise SiteRefusal("bad_request", f"the settings do not validate at this site: {str(e)[:200]}") from None
    except (OmegaConfBaseException, ValueError, TypeError):
        raise SiteRefusal("bad_request", "the settings do not validate at this site") from None


def show_config(overrides: Optional[list[str]] = None) -> str:
    return load_settings(overrides or []).to_yaml()


def describe(overrides: Optional[list[str]] = None) -> str:
    """Every option of the composed configuration with its value and its one-line description (the dataclass
    field's `help` metadata): what `fedmm config --help` prints. Group options list their choices."""
    from dataclasses import fields, is_dataclass

    from fedmm.options import description

    settings = load_settings(overrides or [])
    cfg = settings.cfg

    def text(value: Any) -> str:
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value, resolve=True)
        return "null" if value is None else "''" if value == "" else str(value).replace("'", "")

    rows: list[tuple[str, str]] = []

    def node(prefix: str, cls: type) -> None:
        for f in fields(cls):
            if (f.name == "name" and prefix) or (not prefix and f.name in GROUPS):
                continue  # a group's choice, shown on its own line
            key = f"{prefix}{f.name}"
            value = OmegaConf.select(cfg, key)
            if is_dataclass(f.type) or (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
                sub = f.default_factory if isinstance(f.default_factory, type) else f.type
                group = f.name in RUN_GROUPS
                head = f"{f.name}={cfg[f.name].name}" if group else f"{f.name}:"
                choices = f" (choose: {', '.join(available(f.name))})" if group else ""
                doc = " ".join((sub.__doc__ or "").strip().split("\n\n")[0].split())
                rows.append((head, doc + choices))
                node(f"{key}.", sub)
            else:
                rows.append((f"  {key}={text(value)}" if prefix else f"{key}={text(value)}", description(f)))

    for group in GROUPS:
        name = cfg[group].name
        cls = _schema_for(group, name)
        rows.append((f"{group}={name}", f"choose: {', '.join(available(group))}"))
        node(f"{group}.", cls)
    node("", Schema)
    width = min(44, max(len(k) for k, _ in rows) + 2)
    return "\n".join(f"{k:<{width}}{d}".rstrip() if len(k) < width else f"{k}  {d}".rstrip() for k, d in rows) + "\n"
