"""The metrics record has one owner: its JSON columns, the alias older readers use, and the documented table."""
from pathlib import Path

from fedmm.record import EpochRecord, RoundRecord, describe, eval_summary, step_key

ROOT = Path(__file__).resolve().parent.parent


def test_round_record_columns_prefixes_and_alias():
    r = RoundRecord(round=3, clients_sampled=4, clients_replied=3, clients=[0, 2, 3], num_examples=90, lr=0.1,
                    train_loss=1.5, bytes_down=400, bytes_up=300, client_seconds=2.0, client_seconds_max=0.9,
                    eval_seconds=0.1, seconds=2.5, eval={"loss": 1.2, "accuracy": 0.5}, strategy={"beta": 0.25},
                    failures={1: "TimeoutError: no reply"}).to_json()
    assert r["num_clients"] == r["clients_replied"] == 3 and r["clients_sampled"] == 4
    assert r["eval_accuracy"] == 0.5 and r["strategy_beta"] == 0.25 and r["failures"] == {1: "TimeoutError: no reply"}
    assert "eval" not in r and "strategy" not in r
    assert list(r)[0] == "round" and list(r)[-1] == "seconds"
    assert eval_summary(r) == "eval_loss=1.2000, eval_accuracy=0.5000"  # eval_seconds is a timing, not a metric
    clean = RoundRecord(round=1, clients_sampled=1, clients_replied=1, clients=[0], num_examples=1, lr=0.1,
                        train_loss=0.0, bytes_down=1, bytes_up=1, client_seconds=0.0, client_seconds_max=0.0,
                        eval_seconds=0.0, seconds=0.0).to_json()
    assert "failures" not in clean


def test_epoch_record_and_step_key():
    e = EpochRecord(epoch=2, num_examples=10, lr=0.01, train_loss=0.5, eval={"loss": 0.4}, seconds=1.0).to_json()
    assert e == {"epoch": 2, "num_examples": 10, "lr": 0.01, "train_loss": 0.5, "eval_loss": 0.4, "seconds": 1.0}
    assert step_key([e]) == "epoch" and step_key([{"round": 1}]) == "round"


def test_architecture_page_lists_every_column():
    assert describe() in (ROOT / "docs" / "ARCHITECTURE.md").read_text()
