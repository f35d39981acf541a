"""Fuzzing what users type and what data files hold (hypothesis): generated override lists over every run-level
option, and generated MM-IMDb CSV rows, never give a traceback, and a configuration that loads never describes a
run that silently does nothing."""

import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmm.config import load_settings
from fedmm.config.schema import BOUNDS, Schema
from fedmm.errors import FedmmError

BASE = ["task=synthetic", "model=fusion_tiny", "task.num_train=60", "task.num_val=10", "task.num_test=10"]
GROUP_KEYS = {
    "partition": ["name", "alpha", "min_size", "max_tries"],
    "modality": ["text_only", "image_only", "missing_rate", "drop"],
    "compression": ["kind", "block_size", "error_feedback"],
    "attack": ["name", "clients", "scale", "std", "start_round"],
    "privacy": [
        "name",
        "mode",
        "clip_norm",
        "noise_multiplier",
        "target_epsilon",
        "delta",
        "noise_seed",
        "secure_aggregation",
        "secagg_shares",
        "secagg_threshold",
        "secagg_quantization",
    ],
}
KEYS = [f.name for f in fields(Schema) if f.name not in ("task", "model", "strategy", "runtime", *GROUP_KEYS)]
KEYS += [f"{g}.{k}" for g, ks in GROUP_KEYS.items() for k in ks] + list(GROUP_KEYS)  # `attack=[0]` too

values = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**40), 2**40),
    st.sampled_from(["nan", "inf", "-inf", "null", "true", "1e309"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: f"{x:g}"),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.sampled_from(["[]", "[1]", "[0,1]", "auto", "clip", "iid", "dirichlet", "int8_block", "scale"]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_generated_overrides_load_or_fail_with_one_line(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        s = load_settings(BASE + overrides)
    except FedmmError as e:
        assert str(e).strip() and "\n" not in str(e)
        return
    for key, bound in BOUNDS.items():  # a configuration that loads describes a run that does something
        value = s.cfg
        for part in key.split("."):
            value = value[part]
        assert value is None or bound.holds(float(value)), (key, value)
    assert math.isfinite(float(s.lr)) and s.rounds >= 1 and s.batch_size >= 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=200), st.text(max_size=30)), min_size=0, max_size=6))
def test_generated_csv_rows_are_read_or_refused_with_one_line(tmp_path_factory, rows):
    import csv

    from fedmm.data.bad_samples import BadSamples
    from fedmm.data.mmimdb.records import read_csv, to_dataset

    folder = tmp_path_factory.mktemp("csv")
    (folder / "posters").mkdir()
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["img_name", "text", "labels"])
        w.writerows(rows)
    for policy in ("error", "skip"):
        try:
            records = read_csv(folder / "train.csv", BadSamples(policy), folder / "posters")
            data = to_dataset(records, ("Drama", "Comedy"), frozenset({"image", "text"}), 8, BadSamples(policy))
        except FedmmError as e:
            assert policy == "error" and "\n" not in str(e)
            continue
        assert len(data) <= len(rows)


@pytest.mark.parametrize("bad", ["rounds=1e309", "lr=1e309", "output_dir=''"])
def test_edge_values(bad):
    try:
        load_settings(BASE + [bad])
    except FedmmError as e:
        assert "\n" not in str(e)
