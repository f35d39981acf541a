"""Evaluation metrics as pure numpy functions (no model, no torch).

Single-label: `accuracy`. Multilabel (threshold 0.5 on sigmoid probabilities, or per-label thresholds): `micro_f1`
(pool all label decisions), `macro_f1` (mean of per-label F1), `weighted_f1` (per-label F1 weighted by the label's
positives), `samples_f1` (mean over examples of each example's F1). Where a label (or an example) has no positives
and no predictions, its F1 is `zero_division`: fedmm's default 1 (the model made no mistake on it, scikit-learn's
`zero_division=1`); 0 is scikit-learn's default (`task.zero_division` chooses).

`tune_thresholds` picks per-label thresholds on a validation split (never the test split).

Generative VQA: `vqa_accuracy(prediction, answers)`, the official VQA accuracy over normalised answers.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else 0.0


def f1_counts(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives, false negatives of binary [N, C] arrays."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = (pred & labels).sum(0)
    fp = (pred & ~labels).sum(0)
    fn = (~pred & labels).sum(0)
    return tp, fp, fn


def micro_f1(pred: np.ndarray, labels: np.ndarray, zero_division: float = 1.0) -> float:
    tp, fp, fn = (x.sum() for x in f1_counts(pred, labels))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else float(zero_division)


def macro_f1(pred: np.ndarray, labels: np.ndarray, zero_division: float = 1.0) -> float:
    per_label = _f1(*f1_counts(pred, labels), zero_division)
    return float(per_label.mean()) if per_label.size else 0.0


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, zero_division: float = 1.0) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), float(zero_division))


def weighted_f1(pred: np.ndarray, labels: np.ndarray, zero_division: float = 1.0) -> float:
    tp, fp, fn = f1_counts(pred, labels)
    support = tp + fn
    return float((_f1(tp, fp, fn, zero_division) * support).sum() / support.sum()) if support.sum() else 0.0


def samples_f1(pred: np.ndarray, labels: np.ndarray, zero_division: float = 1.0) -> float:
    tp, fp, fn = f1_counts(np.asarray(pred).T, np.asarray(labels).T)  # per example instead of per label
    return float(_f1(tp, fp, fn, zero_division).mean()) if tp.size else 0.0


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per label, the probability threshold in `grid` (default 0.05..0.95) that maximises that label's F1 on the
    given (validation) data; ties keep the threshold closest to 0.5."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid, dtype=np.float64)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]  # argmax takes the first best: nearest to 0.5
    scores = np.stack([_f1(*f1_counts(probs >= t, labels)) for t in order])  # [thresholds, C]
    return order[scores.argmax(axis=0)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from multilabel logits (numerically safe for large |logits|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def compute(
    names: tuple[str, ...] | list[str],
    logits: np.ndarray,
    labels: np.ndarray,
    thresholds: np.ndarray | None = None,
    zero_division: float = 1.0,
) -> dict[str, float]:
    """The named metrics from model logits. Multilabel when `labels` is 2-D (multi-hot); `thresholds` (per label,
    on probabilities) replace 0.5; `zero_division` is the F1 of a label or example with nothing to find."""
    out = {}
    if labels.ndim == 2:
        pred = logits >= 0.0 if thresholds is None else sigmoid(logits) >= thresholds  # p >= 0.5 like p >= t
    else:
        pred = logits.argmax(axis=1)
    for name in names:
        fn = METRICS.get(name)
        if fn is None:
            raise ValueError(f"unknown metric {name}")
        out[name] = fn(pred, labels) if fn is accuracy else fn(pred, labels, zero_division)
    return out


METRICS = {
    "accuracy": accuracy,
    "micro_f1": micro_f1,
    "macro_f1": macro_f1,
    "weighted_f1": weighted_f1,
    "samples_f1": samples_f1,
}


# -- VQA accuracy ------------------------------------------------------------------------------------------------
# `official`: the official evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py) rule for
# rule, its tables as they are. `normalized`: fedmm's earlier rule, both sides fully normalised, a single reference
# answer an exact match (easy-VQA, whose questions have one answer). `fedumm`: NVFlare's FedUMM `vqa_soft_score`.
VQA_RULES = ("official", "normalized", "fedumm")

# vqaEval.py's `punct`, `manualMap`, `articles` and `contractions` (keys such as "Im" and "Id've" are capitalised
# there and so never match the lower-cased words they are looked up with; kept so)
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_OFFICIAL_CONTRACTIONS = dict(
    pair.split(":")
    for pair in (
        "aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've "
        "couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've "
        "hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd "
        "howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've "
        "it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've "
        "mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've "
        "oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't "
        "shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't "
        "shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've "
        "somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd "
        "someoned've:someone'd've someone'dve:someone'd've someonell:someone'll someones:someone's "
        "somethingd:something'd somethingd've:something'd've something'dve:something'd've somethingll:something'll "
        "thats:that's thered:there'd thered've:there'd've there'dve:there'd've therere:there're theres:there's "
        "theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've "
        "twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll "
        "whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's whereve:where've "
        "whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll "
        "whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've "
        "wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've "
        "y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've youll:you'll "
        "youre:you're youve:you've"
    ).split()
)
_NUMBER_COMMA = re.compile(r"(\d)(\,)(\d)")
# The official `(?!<=\d)(\.)(?!\d)`: its first group is a lookahead (not the lookbehind it looks like), so this is
# "a period not followed by a digit"; the official calls `.sub("", text, re.UNICODE)`, whose third argument is
# `count`: at most re.UNICODE == 32 periods are removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")


def official_punctuation(text: str) -> str:
    """vqaEval.py's `processPunctuation`: each mark next to a space (or anywhere, when the text has a digit-comma-
    digit) is removed, elsewhere replaced by a space; then periods that are not decimal points go (32 at most)."""
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _NUMBER_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, 32)


def official_digit_article(text: str) -> str:
    """vqaEval.py's `processDigitArticle`: lower case, number words as digits, articles dropped, contractions per
    its table."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_OFFICIAL_CONTRACTIONS.get(w, w) for w in words)


def official_vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """vqaEval.py's accuracy of one question: the prediction gets both processing steps; the reference answers stay
    as annotated, unless they disagree, when each gets the punctuation step only (no lower case, number words or
    articles); then the mean over the annotators of min(#other annotators whose answer equals it / 3, 1). A single
    reference answer has no other annotator: 0."""
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    pred = official_digit_article(official_punctuation(pred))
    refs = [official_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    hits = sum(r == pred for r in refs)
    return float(np.mean([min((hits - (r == pred)) / 3.0, 1.0) for r in refs]))


# `normalized`: fedmm's own contraction table, every key lower case (a few more keys than the official's)
_CONTRACTIONS = {
    w.replace("'", ""): w
    for w in (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he'll he's how'd how'll "
        "how's i'd i'll i'm i've isn't it'd it'll let's ma'am mightn't might've mustn't must've needn't o'clock "
        "oughtn't shan't she'd she'll she's should've shouldn't that's there'd there're there's they'd they'll "
        "they're they've 'twas wasn't we'd we'll we're we've weren't what'll what're what's what've when's where'd "
        "where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all you'd you'll "
        "you're you've"
    ).split()
}
_PERIOD = re.compile(r"\.(?!\d)")  # a period that is not a decimal point


def normalize_answer(text: str) -> str:
    """`vqa_metric=normalized`'s form of an answer: lower case; punctuation next to a space (or in a number such as
    1,000) removed, elsewhere replaced by a space ("black-and-white" -> "black and white"); periods removed except
    decimal points; number words as digits; articles dropped; contractions written with their apostrophe."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _NUMBER_COMMA.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_CONTRACTIONS.get(w, _NUMBER_WORDS.get(w, w)) for w in out.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str], rule: str = "official") -> float:
    """The VQA accuracy of one predicted answer against the annotators' answers (10 in VQA v2), by `rule`
    (VQA_RULES): `official` as vqaEval.py (`official_vqa_accuracy`); `normalized`: both sides normalised
    (`normalize_answer`), the same leave-one-out mean, and a single reference answer an exact match (easy-VQA);
    `fedumm`: NVFlare FedUMM's `vqa_soft_score`, min(#answers equal to the prediction / 3, 1) after strip and lower
    case, no leave-one-out."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if rule == "official":
        return official_vqa_accuracy(prediction, answers)
    if rule == "fedumm":
        p = prediction.strip().lower()
        return min(1.0, sum(p == a.strip().lower() for a in answers) / 3.0)
    if rule != "normalized":
        raise ValueError(f"unknown VQA accuracy rule {rule!r}; choose one of {', '.join(VQA_RULES)}")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    hits = sum(r == pred for r in refs)
    # leaving out annotator i removes one match when i's answer is the prediction
    return float(np.mean([min((hits - (r == pred)) / 3.0, 1.0) for r in refs]))


def site_summary(per_site: dict[Any, dict[str, float]]) -> dict[str, float]:
    """Client-side evaluation over the sites that scored (`{site: {"num_examples": n, metric: value, ...}}`): for
    every metric but losses, `<metric>_mean` weighted by the sites' example counts (the figure of the union of
    their test data for accuracy-like metrics), `<metric>_min` (the worst site: fairness) and `<metric>_std` (the
    population std across sites, unweighted: each site counts once)."""
    names = sorted({k for s in per_site.values() for k in s if k != "num_examples" and not k.endswith("loss")})
    out: dict[str, float] = {}
    for name in names:
        scored = [(s["num_examples"], s[name]) for s in per_site.values() if name in s and s["num_examples"] > 0]
        if not scored:
            continue
        n, v = np.array(scored, dtype=np.float64).T
        out[f"{name}_mean"] = float((n * v).sum() / n.sum())
        out[f"{name}_min"] = float(v.min())
        out[f"{name}_std"] = float(v.std())
    return out
