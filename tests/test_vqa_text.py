"""VQA answer normaliser and metrics (hand-made cases), and the VQA-RAD reader on the real data."""
from __future__ import annotations

import json

import pytest

from meditok.data.vqa_rad import (
    QUESTION_TYPES,
    VAL_FRACTION,
    description,
    disjoint_train,
    image_overlap,
    load_vqa_rad,
    majority_answers,
    question_types,
    validation_split,
)
from meditok.errors import InvalidInputError
from meditok.metrics.text import exact_match, normalize_answer, paired_closed_test, token_recall, vqa_scores


@pytest.mark.parametrize("raw, norm", [
    ("Yes.", "yes"), ("  NO ", "no"), ("The left lung", "left lung"), ("a mass", "mass"),
    ("two", "2"), ("Two lesions", "2 lesions"), ("X-ray", "x-ray"), ("T1/T2", "t1/t2"),
    ("2.5 cm", "2.5 cm"), ("Right-sided (pleural) effusion!", "right-sided pleural effusion"),
    ("no, there is not", "no there is not"), (4, "4"), ("ｙｅｓ", "yes"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_and_recall_hand_cases():
    assert exact_match("Yes", "yes.") == 1.0
    assert exact_match("yes, there is", "yes") == 0.0
    assert exact_match("the liver", "Liver") == 1.0
    # recall: share of ground-truth tokens in the prediction
    assert token_recall("left lung mass", "left lung") == 1.0
    assert token_recall("lung", "left lung") == 0.5
    assert token_recall("right kidney", "left lung") == 0.0
    assert token_recall("The Liver.", "liver") == 1.0
    # multiset matching: one 'left' in the prediction covers one of two
    assert token_recall("left", "left left") == 0.5
    assert token_recall("", "") == 1.0 and token_recall("x", "") == 0.0


def test_vqa_scores_groups():
    items = [
        {"answer": "yes", "answer_type": "CLOSED", "question_types": ["PRES"]},
        {"answer": "no", "answer_type": "CLOSED", "question_types": ["PRES", "POS"]},
        {"answer": "left lung", "answer_type": "OPEN", "question_types": ["POS"]},
        {"answer": "ct", "answer_type": "OPEN", "question_types": ["MODALITY"]},
    ]
    preds = ["Yes.", "yes", "lung", "CT"]
    s = vqa_scores(items, preds)
    assert s["closed"]["closed_accuracy"] == 0.5 and s["closed"]["n"] == 2
    assert s["open"]["open_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["open"]["open_accuracy"] == 0.5
    assert s["overall"]["accuracy"] == pytest.approx(2 / 4)
    pos = s["by_question_type"]["POS"]  # the two-type question counts under PRES and POS
    assert pos["n"] == 2 and pos["closed_accuracy"] == 0.0 and pos["open_recall"] == 0.5
    assert s["by_question_type"]["PRES"]["n"] == 2
    assert s["by_question_type"]["MODALITY"]["closed_accuracy"] is None
    with pytest.raises(ValueError):
        vqa_scores(items, preds[:2])


def test_paired_closed_test_counts_discordant_closed_only():
    items = [{"answer": a, "answer_type": t} for a, t in
             [("yes", "CLOSED"), ("no", "CLOSED"), ("yes", "CLOSED"), ("no", "CLOSED"), ("liver", "OPEN")]]
    a = ["Yes", "no", "no", "no", "liver"]
    b = ["no", "no", "yes", "yes", "kidney"]  # the open question differs too but does not count
    r = paired_closed_test(items, a, b)
    assert (r["closed_n"], r["a_only"], r["b_only"]) == (4, 2, 1)
    assert r["difference_points"] == pytest.approx(25.0)
    assert r["p_value"] == pytest.approx(1.0)  # 2 * P(X <= 1 | 3, 1/2) = 2 * 4/8, capped
    assert paired_closed_test(items, a, a)["p_value"] == 1.0
    with pytest.raises(ValueError):
        paired_closed_test(items, a, b[:2])


def test_paired_closed_test_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(31, 20), (18, 22), (35, 20), (0, 7), (40, 12)]:
        items = [{"answer": "yes", "answer_type": "CLOSED"}] * (a_only + b_only)
        r = paired_closed_test(items, ["yes"] * a_only + ["no"] * b_only, ["no"] * a_only + ["yes"] * b_only)
        expect = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert r["p_value"] == pytest.approx(expect, rel=1e-9)


def test_question_types_canonical():
    assert question_types("PRES, ATTRIB") == ("PRES", "ATTRIB")
    assert question_types("ATRIB") == ("ATTRIB",) and question_types("PRSE") == ("PRES",)
    assert question_types("Other") == ("OTHER",) and question_types(" ") == ("OTHER",)


def test_vqa_rad_reader_real(shared_data):
    root = shared_data / "vqa_rad"
    train, test = load_vqa_rad(root, "train"), load_vqa_rad(root, "test")
    # the dataset's documented sizes (shared/data/README.md)
    assert len(train) == 3064 and len(test) == 451
    assert sum(it.closed for it in test) == 272 and sum(not it.closed for it in test) == 179
    assert {it.answer_type for it in train} == {"CLOSED", "OPEN"}  # "CLOSED " stripped
    assert sum(it.closed for it in train) == 1823
    assert all(isinstance(it.answer, str) and it.answer for it in train + test)  # int answers cast
    assert {t for it in train + test for t in it.question_types} <= set(QUESTION_TYPES)
    raw = json.loads((root / "trainset.json").read_text())
    assert any(isinstance(r["answer"], int) for r in raw)
    ov = image_overlap(train, test)
    # VQA-RAD re-uses images: every test image is a training image
    assert ov["test_images_in_train_by_name"] == ov["test_images"] == 203
    assert ov["test_images_in_train_by_md5"] == 203
    dis = disjoint_train(train, test)
    test_names = {it.image_name for it in test}
    assert dis and not {it.image_name for it in dis} & test_names
    assert len({it.image_name for it in dis}) == 314 - 203
    major = majority_answers(train)
    closed = [it for it in test if it.closed]
    assert major["CLOSED"] == "no"
    rate = sum(normalize_answer(it.answer) == "no" for it in closed) / len(closed)
    assert 0.45 < rate < 0.55


def test_vqa_rad_reader_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="trainset.json"):
        load_vqa_rad(tmp_path, "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "testset.json").write_text(json.dumps([{"qid": 1, "image_name": "x.jpg", "answer": "yes",
                                                        "answer_type": "CLOSED", "question": "q?"}]))
    with pytest.raises(InvalidInputError, match="x.jpg"):
        load_vqa_rad(tmp_path, "test")
    with pytest.raises(InvalidInputError, match="split"):
        load_vqa_rad(tmp_path, "validation")


def test_description_uses_only_own_answers(shared_data):
    train = load_vqa_rad(shared_data / "vqa_rad", "train")
    name = next(it.image_name for it in train if "MODALITY" in it.question_types and not it.closed)
    items = [it for it in train if it.image_name == name]
    text = description(items[0].organ, items)
    modality = next(it.answer.lower() for it in items if "MODALITY" in it.question_types and not it.closed)
    assert modality in text and text.startswith("This is")


def test_validation_split_is_shaped_like_test_and_leaks_nothing(shared_data):
    root = shared_data / "vqa_rad"
    train, test = load_vqa_rad(root, "train"), load_vqa_rad(root, "test")
    rest, val = load_vqa_rad(root, "train-val"), load_vqa_rad(root, "val")
    # a partition of the training questions, the same on every call
    assert sorted(it.qid for it in rest + val) == sorted(it.qid for it in train)
    assert [it.qid for it in val] == [it.qid for it in validation_split(train, test)[1]]
    assert {it.split for it in val} == {"val"} and {it.split for it in rest} == {"train"}
    # like test: questions about test images that training still shows through other questions
    test_images = {it.image_name for it in test}
    assert {it.image_name for it in val} <= test_images
    assert {it.image_name for it in val} <= {it.image_name for it in rest}
    assert {it.image_name for it in rest} == {it.image_name for it in train}
    # no held-out question is also asked of the same image in training (repeats go together)
    assert not {(it.image_name, it.question.lower()) for it in val} & {
        (it.image_name, it.question.lower()) for it in rest}
    groups = {(it.image_name, it.question.lower()) for it in train if it.image_name in test_images}
    share = len({(it.image_name, it.question.lower()) for it in val}) / len(groups)
    assert abs(share - VAL_FRACTION) < 0.04
    assert 0.35 < sum(it.closed for it in val) / len(val) < 0.75
    other = validation_split(train, test, seed=1)[1]
    assert {it.qid for it in other} != {it.qid for it in val}


def test_choose_run_uses_validation_only(tmp_path):
    """The shipped adapter is the train-val run with the best selected val closed accuracy
    (first listed on ties); a run without a curve and best/ adapter is refused by name."""
    from meditok.vqa.select import best_point, choose_run, read_curve

    def run(name: str, closed: list[float]) -> str:
        d = tmp_path / name
        (d / "val").mkdir(parents=True)
        (d / "best").mkdir()
        points = {str(157 * (i + 1)): {"closed_accuracy": c, "open_recall": 0.9, "snapshot": f"step_{157 * (i + 1):06d}"}
                  for i, c in enumerate(closed)}
        (d / "val" / "curve.json").write_text(json.dumps({"points": points}))
        return str(d)

    a, b, c = run("a", [0.50, 0.62, 0.60]), run("b", [0.55, 0.62]), run("c", [0.40, 0.61])
    assert best_point(read_curve(a)) == (314, read_curve(a)[314])  # earliest of the maximum
    assert best_point({}) is None and read_curve(tmp_path / "nothing") == {}
    assert choose_run([a, b, c]) == (tmp_path / "a", 0.62)
    assert choose_run([c, b, a]) == (tmp_path / "b", 0.62)  # a tie keeps the first listed
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidInputError, match="d: no validation curve"):
        choose_run([a, tmp_path / "d"])


def test_paired_benchmark_agrees_with_the_recorded_accuracies(tmp_path):
    """benchmarks/vqa_paired.py on the committed test predictions: the discordant counts of each
    pair must reproduce the closed accuracies the eval records hold (same questions, same scorer)."""
    import importlib.util
    import shutil
    from pathlib import Path

    from meditok.vqa.bench import label_stem

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks/results/vqa"
    table = json.loads((results / "vqa_rad.json").read_text())
    labels = table["order"][:3]
    for lab in labels:  # a copy: the script writes paired.{json,md} into the folder it reads
        shutil.copy(results / f"{label_stem(lab)}.predictions.jsonl", tmp_path)
    (tmp_path / "vqa_rad.json").write_text(json.dumps({"order": labels}))
    spec = importlib.util.spec_from_file_location("vqa_paired", root / "benchmarks/vqa_paired.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--results", str(tmp_path), "--baseline", labels[0]])
    assert [p["a"] for p in out["pairs"]] == labels[1:] and (tmp_path / "paired.md").is_file()
    for p in out["pairs"]:
        acc = {lab: table["models"][lab]["scores"]["closed"]["closed_accuracy"] for lab in (p["a"], p["b"])}
        assert p["closed_n"] == 272
        assert p["difference_points"] == pytest.approx(100 * (acc[p["a"]] - acc[p["b"]]))
        assert 0.0 < p["p_value"] <= 1.0
    with pytest.raises(InvalidInputError, match="no predictions"):
        mod.main(["--results", str(tmp_path), "--baseline", "nobody"])
