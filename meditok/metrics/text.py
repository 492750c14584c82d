"""Answer metrics of medical VQA (VQA-RAD, SLAKE), LLaVA-Med protocol.

* :func:`normalize_answer` — the one normaliser every comparison goes through: Unicode NFKC,
  lower case, punctuation other than in-word ``-`` / ``/`` / ``.`` removed, articles dropped,
  number words up to twenty written as digits, whitespace collapsed. ``"Yes."`` → ``"yes"``,
  ``"The left lung"`` → ``"left lung"``, ``"two"`` → ``"2"``.
* closed-ended questions: **accuracy** = normalised exact match;
* open-ended questions: **recall** = share of the ground-truth answer's tokens found in the
  prediction (each ground-truth token occurrence matched at most once), and the stricter
  normalised **exact-match accuracy**.

:func:`vqa_scores` aggregates per answer type and per question type; :func:`paired_closed_test`
compares two systems on the same closed questions (exact McNemar test).
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

_NUMBERS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
_ARTICLES = {"a", "an", "the"}
# Punctuation that separates words; '-', '/' and '.' survive inside a word (x-ray, t1/t2, 2.5).
_PUNCT = re.compile(r"[^\w\s\-/.]|(?<!\w)[\-/.]|[\-/.](?!\w)")


def normalize_answer(text: object) -> str:
    """Canonical form of an answer for comparison (see the module docstring)."""
    s = unicodedata.normalize("NFKC", str(text)).lower().strip()
    s = _PUNCT.sub(" ", s)
    words = [_NUMBERS.get(w, w) for w in s.split() if w not in _ARTICLES]
    return " ".join(words)


def answer_tokens(text: object) -> list[str]:
    """Normalised whitespace tokens of an answer."""
    return normalize_answer(text).split()


def exact_match(prediction: object, truth: object) -> float:
    """1.0 when the normalised prediction equals the normalised ground truth."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_recall(prediction: object, truth: object) -> float:
    """Share of ground-truth tokens present in the prediction (LLaVA-Med open-ended recall).

    Token occurrences are matched as multisets: a ground truth ``"left left"`` needs ``left``
    twice in the prediction for full recall. An empty ground truth scores 1.0 only against an
    empty prediction.
    """
    gt = answer_tokens(truth)
    pred = Counter(answer_tokens(prediction))
    if not gt:
        return float(not pred)
    found = 0
    for tok in gt:
        if pred[tok] > 0:
            pred[tok] -= 1
            found += 1
    return found / len(gt)


def is_closed(item: Mapping) -> bool:
    """Whether a VQA item is closed-ended (its ``answer_type``, case and spaces ignored)."""
    return str(item["answer_type"]).strip().upper() == "CLOSED"


def vqa_scores(items: Sequence[Mapping], predictions: Sequence[object]) -> dict:
    """Scores of ``predictions`` against ``items`` (dicts with ``answer``, ``answer_type``
    ``CLOSED``/``OPEN`` and ``question_types``, a sequence of type names).

    Returns ``{"overall": …, "closed": …, "open": …, "by_question_type": {TYPE: …}}`` where each
    group holds ``n``, ``closed_n``, ``open_n``, ``closed_accuracy`` (exact match on closed
    questions), ``open_recall`` and ``open_accuracy`` (on open questions) and ``accuracy``
    (exact match over all its questions). A question with two types counts in both.
    Means of empty groups are ``None``.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    groups: dict[str, list[tuple[Mapping, object]]] = defaultdict(list)
    for it, pred in zip(items, predictions):
        groups["overall"].append((it, pred))
        groups["closed" if is_closed(it) else "open"].append((it, pred))
        for qt in it.get("question_types") or ("OTHER",):
            groups[f"qt:{qt}"].append((it, pred))
    result: dict = {k: _group(v) for k, v in groups.items() if not k.startswith("qt:")}
    for key in ("closed", "open"):
        result.setdefault(key, _group([]))
    result["by_question_type"] = {k[3:]: _group(v) for k, v in sorted(groups.items())
                                  if k.startswith("qt:")}
    return result


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _group(pairs: list[tuple[Mapping, object]]) -> dict:
    closed = [(it, p) for it, p in pairs if is_closed(it)]
    open_ = [(it, p) for it, p in pairs if not is_closed(it)]
    return {
        "n": len(pairs), "closed_n": len(closed), "open_n": len(open_),
        "closed_accuracy": _mean(exact_match(p, it["answer"]) for it, p in closed),
        "open_recall": _mean(token_recall(p, it["answer"]) for it, p in open_),
        "open_accuracy": _mean(exact_match(p, it["answer"]) for it, p in open_),
        "accuracy": _mean(exact_match(p, it["answer"]) for it, p in pairs),
    }


def paired_closed_test(items: Sequence[Mapping], predictions_a: Sequence[object],
                       predictions_b: Sequence[object]) -> dict:
    """Exact McNemar test of system A against system B on the closed questions of ``items``.

    Accuracy differences of a few points on VQA-RAD's 272 closed questions are within noise, and
    the two systems answer the *same* questions, so the paired test is the one that fits: only
    the discordant questions count (``a_only``: A right and B wrong; ``b_only``: the reverse),
    and under "no difference" each is a fair coin. Returns the counts, the accuracy difference
    in points and the two-sided exact binomial p-value (1.0 with no discordant question).
    """
    if not len(items) == len(predictions_a) == len(predictions_b):
        raise ValueError(f"{len(items)} items but {len(predictions_a)} and {len(predictions_b)} predictions")
    a_only = b_only = n = 0
    for it, pa, pb in zip(items, predictions_a, predictions_b):
        if not is_closed(it):
            continue
        n += 1
        ra, rb = exact_match(pa, it["answer"]), exact_match(pb, it["answer"])
        a_only += int(ra > rb)
        b_only += int(rb > ra)
    k, m = min(a_only, b_only), a_only + b_only
    # two-sided: twice the smaller tail of Binomial(m, 1/2), capped at 1
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
    return {"closed_n": n, "a_only": a_only, "b_only": b_only,
            "difference_points": 100.0 * (a_only - b_only) / n if n else None, "p_value": p}
