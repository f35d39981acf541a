import re

import numpy as np
import pytest

from fedmm import metrics as M


def test_accuracy():
    assert M.accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75


def test_micro_and_macro_f1_hand_computed():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    # label 0: tp2 fp0 fn0 -> F1 1; label 1: tp1 fp0 fn1 -> 2/3; label 2: tp0 fp1 fn1 -> 0
    assert np.isclose(M.macro_f1(pred, labels), (1 + 2 / 3 + 0) / 3)
    # micro: tp3 fp1 fn2 -> 6 / 9
    assert np.isclose(M.micro_f1(pred, labels), 6 / 9)


def test_compute_uses_argmax_or_threshold():
    logits = np.array([[0.1, 2.0], [3.0, -1.0]])
    assert M.compute(["accuracy"], logits, np.array([1, 1])) == {"accuracy": 0.5}
    ml = M.compute(["micro_f1"], np.array([[1.0, -1.0]]), np.array([[1.0, 0.0]]))
    assert ml["micro_f1"] == 1.0


def test_weighted_and_samples_f1_hand_computed():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    # per-label F1 [1, 2/3, 0] with supports [2, 2, 1]
    assert np.isclose(M.weighted_f1(pred, labels), (2 * 1 + 2 * 2 / 3 + 1 * 0) / 5)
    # per example: (tp1 fn1) -> 2/3; (tp1 fp1) -> 2/3; (tp1 fn1) -> 2/3
    assert np.isclose(M.samples_f1(pred, labels), 2 / 3)
    assert M.samples_f1(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0  # nothing to find, nothing predicted


def test_tuned_thresholds_maximise_each_label_on_validation_data():
    probs = np.array([[0.30, 0.9], [0.20, 0.6], [0.10, 0.4], [0.35, 0.7]])
    labels = np.array([[1, 1], [1, 0], [0, 0], [1, 1]])
    t = M.tune_thresholds(probs, labels)
    # label 0: any threshold in (0.10, 0.20] finds all three positives without the 0.10 negative; nearest 0.5: 0.2
    # label 1: (0.6, 0.7] separates the positives (0.9, 0.7) from 0.6; nearest 0.5 on the grid: 0.65
    np.testing.assert_allclose(t, [0.2, 0.65])
    logits = np.log(probs / (1 - probs))
    assert M.compute(["macro_f1"], logits, labels, thresholds=t)["macro_f1"] == 1.0
    assert M.compute(["macro_f1"], logits, labels)["macro_f1"] < 1.0


def test_positive_weights_hand_computed():
    from fedmm.train.loop import positive_weights

    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    # label 0: 3 pos, 1 neg -> 1/3; label 1: 1 pos, 3 neg -> 3; label 2: no positive -> 4 negatives / 1
    np.testing.assert_allclose(positive_weights(labels), [1 / 3, 3.0, 4.0])


def test_pos_weight_enters_the_loss_and_tuned_metrics_use_validation_thresholds():
    """MM-IMDb's options, wired through the real backend: BCE with pos_weight equals the hand-written formula, and
    `*_tuned` test metrics use thresholds tuned on the validation split, never on the test split."""
    import torch
    from dataclasses import replace

    from fedmm.backends.fusion import FusionBackend
    from fedmm.config import load_settings
    from fedmm.data.tasks import load_task
    from fedmm.experiment import server_metrics

    s = load_settings(
        ["task=synthetic_multilabel", "model=fusion_tiny", "task.num_train=40", "task.num_val=30", "task.num_test=30"]
    )
    data = replace(load_task(s.task, 0), tune_thresholds=True)
    backend = FusionBackend(s.model, data.train.num_labels, True)
    model = backend.build_model(seed=0).eval()
    batch = backend.collate(data.train, np.arange(8))
    w = torch.linspace(0.5, 3.0, data.train.num_labels)
    loss, logits = backend.loss(model, batch, pos_weight=w)
    y, p = batch["labels"], torch.sigmoid(logits)
    by_hand = -(w * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.isclose(loss, by_hand, atol=1e-5)

    out = server_metrics(model, backend, data, data.test, batch_size=16)
    _, val_logits = backend.predict(model, data.val)
    _, test_logits = backend.predict(model, data.test)
    t = M.tune_thresholds(M.sigmoid(val_logits), data.val.labels)
    expected = M.compute(data.metrics, test_logits, data.test.labels, thresholds=t)
    assert all(np.isclose(out[f"{k}_tuned"], v) for k, v in expected.items())
    assert out["micro_f1"] == M.compute(data.metrics, test_logits, data.test.labels)["micro_f1"]


def test_vqa_answer_normalisation():
    cases = {
        "The Dog.": "dog",
        "two": "2",
        "None": "0",
        "dont": "don't",
        "1,000": "1000",
        "red, white": "red white",
        "black-and-white": "black and white",
        "3.5": "3.5",
        "Yes!": "yes",
        "isnt it?": "isn't it",
        " a\tman's  hat\n": "man's hat",
        "(left)": "left",
    }
    for raw, expected in cases.items():
        assert M.normalize_answer(raw) == expected, raw


def test_vqa_accuracy_hand_computed():
    for rule in ("official", "normalized"):  # the leave-one-out mean both rules share
        # 2 of 10 annotators said yes. Leaving out a "yes" annotator leaves 1 match (1/3), a "no" one 2 (2/3):
        # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
        assert np.isclose(M.vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8, rule), 0.6)
        # 3 of 10: (3 * 2/3 + 7 * min(3/3, 1)) / 10 = 0.9
        assert np.isclose(M.vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7, rule), 0.9)
        # 4 or more matches: every subset keeps at least 3
        assert M.vqa_accuracy("cat", ["cat"] * 4 + ["dog"] * 6, rule) == 1.0
        assert M.vqa_accuracy("bird", ["dog"] * 10, rule) == 0.0
    # normalized: both sides normalised ("Two" = "2" = "two"; "The dog." = "dog"), one reference an exact match
    assert M.vqa_accuracy("Two", ["2"] * 3 + ["two"] * 7, "normalized") == 1.0
    assert np.isclose(M.vqa_accuracy("The dog.", ["dog"] + ["cat"] * 9, "normalized"), 0.3)  # (0 + 9 * 1/3) / 10
    assert M.vqa_accuracy("A circle", ["circle"], "normalized") == 1.0
    assert M.vqa_accuracy("square", ["circle"], "normalized") == 0.0
    # fedumm: NVFlare FedUMM's min(#equal / 3, 1) after strip and lower case, no leave-one-out, no normalisation
    assert M.vqa_accuracy(" Cat ", ["cat"] * 2 + ["dog"] * 8, "fedumm") == pytest.approx(2 / 3)
    assert (
        M.vqa_accuracy("two", ["2"] * 10, "fedumm") == 0.0 and M.vqa_accuracy("circle", ["circle"], "fedumm") == 1 / 3
    )
    with pytest.raises(ValueError, match="unknown VQA accuracy rule 'exact'"):
        M.vqa_accuracy("x", ["x"], "exact")


class OfficialVQAEval:
    """GT-Vision-Lab/VQA's PythonEvaluationTools/vqaEvaluation/vqaEval.py, one question at a time, kept in the
    shape of the original (answers as the annotation file's records, `item != gtAnsDatum` over those records,
    `manualMap.setdefault`, `periodStrip.sub(..., re.UNICODE)`), as the oracle fedmm's `official` rule is tested
    against. Its tables are fedmm's (`fedmm.metrics`), pinned by their own test below."""

    def __init__(self):
        self.contractions = dict(M._OFFICIAL_CONTRACTIONS)
        self.manualMap = dict(M._NUMBER_WORDS)
        self.articles = ["a", "an", "the"]
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = list(M._PUNCT)

    def processPunctuation(self, inText):  # noqa: N802 (the original's names)
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) is not None):
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        return self.periodStrip.sub("", outText, re.UNICODE)

    def processDigitArticle(self, inText):  # noqa: N802
        outText = []
        for word in inText.lower().split():
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return " ".join(outText)

    def accuracy(self, resAns, answers):  # noqa: N802
        gts = [{"answer_id": i + 1, "answer": a} for i, a in enumerate(answers)]
        resAns = resAns.replace("\n", " ").replace("\t", " ").strip()
        resAns = self.processDigitArticle(self.processPunctuation(resAns))
        if len(set(answers)) > 1:
            for ansDic in gts:
                ansDic["answer"] = self.processPunctuation(ansDic["answer"])
        gtAcc = []
        for gtAnsDatum in gts:
            otherGTAns = [item for item in gts if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
            gtAcc.append(min(1, float(len(matchingAns)) / 3))
        return float(sum(gtAcc)) / len(gtAcc)


def test_official_vqa_tables_are_vqaevals():
    """Spot checks of the tables against vqaEval.py's text: its punctuation list (no ':' or "'", with '-', '!'),
    its 12 number words, and its contraction table: capitalised keys, and none of fedmm's normalized extras."""
    assert M._PUNCT == (
        ";",
        "/",
        "[",
        "]",
        '"',
        "{",
        "}",
        "(",
        ")",
        "=",
        "+",
        "\\",
        "_",
        "-",
        ">",
        "<",
        "@",
        "`",
        ",",
        "?",
        "!",
    )
    assert len(M._NUMBER_WORDS) == 12 and M._NUMBER_WORDS["none"] == "0"
    c = M._OFFICIAL_CONTRACTIONS
    assert c["Im"] == "I'm" and c["somebody'd"] == "somebodyd" and c["twas"] == "'twas" and c["let's"] == "let's"
    assert {"im", "id", "ill", "shell", "hell", "well", "were", "wed", "ive", "lets", "shed", "shes"} == set(
        M._CONTRACTIONS
    ) - set(c)


def test_official_vqa_accuracy_where_the_normalised_rule_departs():
    """The departures measured against vqaEval.py: reference answers stay raw when the ten agree, get punctuation
    processing only when they disagree, a single reference scores 0, and the contraction table is the official's."""
    cases = [
        ("t-shirt", ["t-shirt"] * 10, 0.0),  # the prediction becomes "t shirt"; ten equal references stay raw
        ("yes", ["yes"], 0.0),  # one reference: no other annotator to agree with
        ("Two", ["two"] * 10, 0.0),  # the prediction becomes "2"; the references stay "two"
        ("2", ["two"] * 3 + ["2"] * 7, 1.0),  # disagreeing references get punctuation only: seven "2" match
        ("im", ["i'm"] * 10, 0.0),  # "im" is no key of the official table ("Im" is)
        ("dont", ["don't"] * 10, 1.0),  # "dont" is: the prediction becomes "don't"
        ("the cat.", ["cat"] * 4 + ["dog"] * 6, 1.0),
    ]
    oracle = OfficialVQAEval()
    for pred, refs, expected in cases:
        assert M.vqa_accuracy(pred, refs) == oracle.accuracy(pred, refs) == expected, (pred, refs)
    assert M.vqa_accuracy("t-shirt", ["t-shirt"] * 10, "normalized") == 1.0  # where normalized departs
    assert M.vqa_accuracy("yes", ["yes"], "normalized") == 1.0
    dots = "a." * 40  # the official's `sub(..., re.UNICODE)` removes 32 periods at most
    assert M.official_punctuation(dots) == oracle.processPunctuation(dots) == "a" * 32 + "a." * 8


def test_official_vqa_accuracy_equals_the_oracle_on_generated_cases():
    rng = np.random.default_rng(0)
    words = [
        "a",
        "the",
        "two",
        "2",
        "none",
        "dont",
        "don't",
        "Im",
        "isnt",
        "t-shirt",
        "red,",
        "1,000",
        "3.5",
        "yes",
        "no",
        "cat",
        "Cat.",
        "(left)",
        "b/w",
        "it's",
        "!",
        "?",
        "an",
        "ten",
        "10",
        "y'all",
        "yall",
        "-",
        "x_y",
    ]
    oracle = OfficialVQAEval()
    for _ in range(3000):

        def phrase():
            return " ".join(rng.choice(words, size=int(rng.integers(1, 4)))) + rng.choice(["", " ", "\n", "\t"])

        pool = [phrase() for _ in range(int(rng.integers(1, 4)))]
        refs = [pool[int(rng.integers(len(pool)))] for _ in range(int(rng.choice([1, 3, 10])))]
        pred = refs[0] if rng.uniform() < 0.4 else phrase()
        assert M.vqa_accuracy(pred, refs) == pytest.approx(oracle.accuracy(pred, refs), abs=1e-12), (pred, refs)


@pytest.mark.parametrize("zero_division", [0, 1])
def test_f1_scores_match_scikit_learn(zero_division):
    """scikit-learn is the reference; the data holds a label with no positives and no predictions (column 3), one
    with predictions but no positives (column 2) and an example with nothing to find (row 0), so that the
    zero_division cases are exercised and a choice between them shows."""
    from sklearn.metrics import f1_score

    labels = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    pred = np.array([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]])
    for name, average in (
        ("micro_f1", "micro"),
        ("macro_f1", "macro"),
        ("weighted_f1", "weighted"),
        ("samples_f1", "samples"),
    ):
        ours = M.compute([name], np.where(pred, 1.0, -1.0), labels, zero_division=zero_division)[name]
        ref = f1_score(labels, pred, average=average, zero_division=zero_division)
        assert ours == pytest.approx(ref, abs=1e-12), name
    assert M.macro_f1(pred, labels, 1) != M.macro_f1(pred, labels, 0)
    empty = np.zeros((3, 2), int)  # no positives anywhere and none predicted
    assert M.micro_f1(empty, empty) == f1_score(empty, empty, average="micro", zero_division=1) == 1.0
    assert M.micro_f1(empty, empty, 0) == f1_score(empty, empty, average="micro", zero_division=0) == 0.0


def test_f1_edges_and_vqa_normalisation_of_whitespace():
    pred = np.array([[1, 0], [0, 0]])
    labels = np.array([[0, 0], [0, 0]])  # no positives anywhere: weighted F1 has no support to weight by
    assert M.weighted_f1(pred, labels) == 0.0 and M.samples_f1(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    # defaults are fedmm's zero_division=1: the empty second example and the untouched label count as 1
    assert M.samples_f1(pred, labels) == 0.5 and M.macro_f1(pred, labels) == 0.5
    assert M.weighted_f1(np.array([[1, 0]]), np.array([[1, 0]])) == 1.0
    assert (
        M.normalize_answer("two\tdogs\n") == "2 dogs"
        and M.vqa_accuracy("Two\nDogs", ["2 dogs"] * 4, "normalized") == 1.0
    )
    with pytest.raises(ValueError, match="^vqa_accuracy needs at least one reference answer$"):
        M.vqa_accuracy("yes", [])


def test_thresholds_on_a_given_grid_and_a_label_nobody_has():
    probs = np.array([[0.30, 0.9], [0.20, 0.6], [0.10, 0.4], [0.35, 0.7]])
    labels = np.array([[1, 1], [1, 0], [0, 0], [1, 1]])
    # Only 0.3 and 0.8 to choose from: label 0 scores 0.8 at 0.3 and 0 at 0.8; label 1 ties (2/3) and keeps the one
    # nearer 0.5. The default grid would give [0.2, 0.65].
    np.testing.assert_allclose(M.tune_thresholds(probs, labels, grid=[0.3, 0.8]), [0.3, 0.3])
    # No positives and a 0.97 negative: every threshold up to 0.95 predicts it (F1 0), so the tie keeps 0.5; a grid
    # reaching past 1 would predict nothing and pick it.
    assert M.tune_thresholds(np.array([[0.97], [0.2], [0.6]]), np.zeros((3, 1), int)).tolist() == [0.5]


def test_edges_of_the_f1_family_and_sigmoid_precision():
    assert M.macro_f1(np.zeros((3, 0)), np.zeros((3, 0))) == 0.0  # no labels at all
    p = M.sigmoid(np.array([0.0, 2.0, -40.0], np.float32))
    assert p.dtype == np.float64 and p[0] == 0.5 and p[1] == pytest.approx(0.8807970779778823, abs=1e-15)


def test_vqa_punctuation_next_to_any_whitespace_is_removed():
    # The official evaluation turns newlines and tabs into spaces first, so "-" beside one counts as beside a space:
    # removed everywhere; with no space beside it, it becomes a space.
    for text in ("b-c\n-d", "b-c\t-d", "b-c- d", "b-c -d"):
        assert M.normalize_answer(text) == "bc d", text
    assert M.normalize_answer("b-c-d") == "b c d"


def test_unknown_metric_and_sites_without_a_figure():
    with pytest.raises(ValueError, match="^unknown metric auc$"):
        M.compute(["auc"], np.zeros((2, 3)), np.array([0, 1]))
    # a site that sent no accuracy (or no examples) is left out; a figure nobody sent gets no summary at all
    summary = M.site_summary({"0": {"num_examples": 4, "accuracy": 0.5}, "1": {"num_examples": 0, "accuracy": 0.1}})
    assert summary["accuracy_mean"] == 0.5 and summary["accuracy_min"] == 0.5
    assert M.site_summary({"0": {"num_examples": 0, "accuracy": 0.3}}) == {}


def test_compute_conventions_at_the_edges():
    assert M.accuracy(np.array([]), np.array([])) == 0.0  # nothing scored: 0, not nan
    # a logit of exactly 0 is p = 0.5: predicted, as p >= t is with tuned thresholds
    labels = np.array([[1, 0], [0, 0]])
    logits = np.array([[0.0, -1.0], [-1.0, -1.0]])
    assert M.compute(["micro_f1"], logits, labels)["micro_f1"] == 1.0
    # the default zero_division is 1: label 1 has nothing to find and nothing predicted
    assert M.compute(["macro_f1"], logits, labels)["macro_f1"] == 1.0


def test_site_summary_by_hand():
    sites = {
        "0": {"num_examples": 1, "loss": 2.0, "accuracy": 0.5},  # one example still counts
        "1": {"num_examples": 3, "loss": 1.0, "accuracy": 0.7, "f1": 0.4},
        "2": {"num_examples": 0, "accuracy": 0.1},  # scored nothing: left out
    }
    out = M.site_summary(sites)
    assert set(out) == {f"{m}_{s}" for m in ("accuracy", "f1") for s in ("mean", "min", "std")}  # no loss, no count
    assert out["accuracy_mean"] == pytest.approx((0.5 + 3 * 0.7) / 4) and out["accuracy_min"] == 0.5
    assert out["accuracy_std"] == pytest.approx(0.1) and out["f1_std"] == 0.0
    # a figure nobody scored is skipped, and the ones after it are still summarised
    assert set(M.site_summary({"0": {"num_examples": 0, "a": 1.0}, "1": {"num_examples": 2, "b": 0.3}})) == {
        "b_mean",
        "b_min",
        "b_std",
    }
