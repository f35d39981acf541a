"""The metrics record has one owner: its JSON columns, the alias older readers use, and the documented table."""

from pathlib import Path

from fedmm.record import EpochRecord, RoundRecord, describe, eval_summary, step_key

ROOT = Path(__file__).resolve().parent.parent


def test_round_record_columns_prefixes_and_alias():
    r = RoundRecord(
        round=3,
        clients_sampled=4,
        clients_replied=3,
        clients=[0, 2, 3],
        num_examples=90,
        lr=0.1,
        train_loss=1.5,
        bytes_down=400,
        bytes_up=300,
        client_seconds=2.0,
        client_seconds_max=0.9,
        eval_seconds=0.1,
        seconds=2.5,
        eval={"loss": 1.2, "accuracy": 0.5},
        strategy={"beta": 0.25},
        failures={1: "TimeoutError: no reply"},
    ).to_json()
    assert r["num_clients"] == r["clients_replied"] == 3 and r["clients_sampled"] == 4
    assert r["eval_accuracy"] == 0.5 and r["strategy_beta"] == 0.25 and r["failures"] == {1: "TimeoutError: no reply"}
    assert "eval" not in r and "strategy" not in r
    assert list(r)[0] == "round" and list(r)[-1] == "seconds"
    assert eval_summary(r) == "eval_loss=1.2000, eval_accuracy=0.5000"  # eval_seconds is a timing, not a metric
    clean = RoundRecord(
        round=1,
        clients_sampled=1,
        clients_replied=1,
        clients=[0],
        num_examples=1,
        lr=0.1,
        train_loss=0.0,
        bytes_down=1,
        bytes_up=1,
        client_seconds=0.0,
        client_seconds_max=0.0,
        eval_seconds=0.0,
        seconds=0.0,
    ).to_json()
    assert "failures" not in clean


def test_epoch_record_and_step_key():
    e = EpochRecord(epoch=2, num_examples=10, lr=0.01, train_loss=0.5, eval={"loss": 0.4}, seconds=1.0).to_json()
    assert e == {"epoch": 2, "num_examples": 10, "lr": 0.01, "train_loss": 0.5, "eval_loss": 0.4, "seconds": 1.0}
    assert step_key([e]) == "epoch" and step_key([{"round": 1}]) == "round"


def test_architecture_page_lists_every_column():
    assert describe() in (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_report_has_the_run_summary_and_human_units(tmp_path):
    import json

    from fedmm.report import write_report
    from fedmm.rundir import RunDir

    rd = RunDir(tmp_path).create()
    rd.write_text(
        "config.yaml",
        "task: {name: synthetic}\nmodel: {name: fusion}\nstrategy: {name: median}\n"
        "runtime: {name: local}\npartition: {name: iid}\nseed: 7\nnum_clients: 2\n",
    )
    rd.write_text(
        "partition.json",
        json.dumps(
            [{"num_examples": 30, "modalities": ["image", "text"]}, {"num_examples": 20, "modalities": ["text"]}]
        ),
    )
    for r in (1, 2):
        rd.append_metrics(
            {
                "round": r,
                "clients_replied": 2,
                "train_loss": 1.0 / r,
                "bytes_up": 2_500_000,
                "bytes_down": 1_000_000,
                "lr": 0.01,
                "seconds": 1.234,
                "eval_accuracy": 0.5 * r,
            }
        )
    text = write_report(tmp_path).read_text()
    assert (
        "Task `synthetic`, model `fusion`, strategy `median`, 2 clients, partition iid, seed 7, runtime `local`."
        in text
    )
    assert "| 1 | 20 | text |" in text
    assert "| 2 | 2 | 0.5000 | 2.50 MB | 1.00 MB | 1.2 s | 1.0000 |" in text
    assert (tmp_path / "metrics.png").stat().st_size > 0
