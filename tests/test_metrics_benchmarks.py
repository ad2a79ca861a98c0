"""CHAIR on COCO, POPE's parsers and metrics, AMBER and grounding: hand-computed cases and the loaders on
fixture files in the public formats (tests/data/{coco,pope,amber,refcoco})."""

from pathlib import Path

import numpy as np
import pytest

from adapt.eval import amber, coco, pope, refcoco
from adapt.eval.formats import DataError

DATA = Path(__file__).parent / "data"


def cats(text):
    return [m.category for m in coco.read_mentions(text)]


# --- CHAIR reading rules ---------------------------------------------------------------------------

def test_synonym_table_is_the_80_coco_categories():
    assert len(coco.SYNONYMS) == 80
    assert {"hair drier", "dining table", "potted plant", "tv", "couch", "sports ball"} <= set(coco.SYNONYMS)


def test_plurals_are_singularised_and_vocabulary_words_kept():
    assert cats("Two dogs, three people, some knives and buses.") == ["dog", "person", "knife", "bus"]
    # inflect alone would read "bus" as "bu"; a vocabulary word is kept as it is
    assert coco.singular("bus") == "bus" and coco.singular("giraffes") == "giraffe"


@pytest.mark.parametrize("text, expected", [
    ("Two hot dogs and a dog.", ["hot dog", "dog"]),
    ("A teddy bear next to a bear.", ["teddy bear", "bear"]),
    ("A stop sign by traffic lights and a fire hydrant.", ["stop sign", "traffic light", "fire hydrant"]),
    ("Wine glasses next to a cell phone.", ["wine glass", "cell phone"]),
])
def test_two_word_names_are_merged_first(text, expected):
    assert cats(text) == expected


def test_toilet_seat_is_not_a_chair():
    assert cats("A toilet seat is up.") == ["toilet"]
    assert cats("The seat of the toilet is down.") == ["toilet"]
    assert cats("A seat in the garden.") == ["chair"]


def test_baby_or_adult_animal_is_the_animal_not_a_person():
    assert cats("A baby elephant with an adult giraffe.") == ["elephant", "giraffe"]
    assert cats("A baby in a crib.") == ["person"]


def test_passenger_vehicle_is_the_vehicle():
    assert cats("A passenger jet over a passenger train.") == ["airplane", "train"]
    assert cats("A passenger waits.") == ["person"]


def test_bow_tie_is_a_tie():
    assert cats("A man in a bow tie.") == ["person", "tie"]


def test_chair_scores_hand_computed():
    truths = [{"dog", "person", "bench"}, {"toilet"}, {"elephant"}]
    caps = ["A man and a dog next to two hot dogs and a cat.",          # person dog | hot dog, cat
            "A toilet seat and a sink. The seat of the toilet is open.",  # toilet toilet | sink
            "A baby elephant and an elephant."]                        # elephant elephant
    r = coco.chair_scores(caps, truths, ids=[101, 202, 303])
    assert r["mentions"] == 9 and r["hallucinated_mentions"] == 3
    assert r["chair_i"] == pytest.approx(3 / 9)        # repeats counted
    assert r["chair_s"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(4 / 5)         # 2 of 3, 1 of 1, 1 of 1
    assert r["mean_words"] == pytest.approx((13 + 13 + 6) / 3)
    assert r["per_image"][0]["hallucinated"] == ["hot dog", "cat"]
    assert r["per_image"][0]["recall"] == pytest.approx(2 / 3)


# --- COCO loader, sample -----------------------------------------------------------------------------

def test_load_coco_unions_instances_and_caption_objects():
    t = coco.load_coco(DATA / "coco" / "annotations")
    assert t.image_ids() == [101, 202, 303]
    assert t.instances[101] == {"dog", "person"}
    assert t.truth(101) == {"dog", "person", "bench"}          # the bench comes from a reference caption
    assert t.truth(202) == {"toilet"}                          # "with the seat up" is the toilet's seat
    assert t.file_names[303] == "COCO_val2014_000000000303.jpg"


def test_load_coco_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no instances_"):
        coco.load_coco(tmp_path)
    (tmp_path / "instances_val2014.json").write_text('{"annotations": [], ')
    with pytest.raises(DataError, match=r"instances_val2014.json: not valid JSON .*line 1"):
        coco.load_coco(tmp_path, captions=False)


def test_sample_is_fixed_by_seed_and_independent_of_order():
    ids = list(range(1000, 1100))
    a = coco.sample_ids(ids, 10, seed=3)
    assert a == coco.sample_ids(list(reversed(ids)), 10, seed=3) == sorted(a) and len(set(a)) == 10
    assert a != coco.sample_ids(ids, 10, seed=4)
    assert coco.sample_ids(ids, 200, seed=0) == ids


def test_id_list_reads_ids_and_file_names(tmp_path):
    (tmp_path / "ids.txt").write_text("101\nCOCO_val2014_000000000202.jpg\n\n")
    assert coco.read_id_list(tmp_path / "ids.txt") == [101, 202]
    (tmp_path / "bad.txt").write_text("101\nabc\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2"):
        coco.read_id_list(tmp_path / "bad.txt")


# --- POPE ---------------------------------------------------------------------------------------------

ANSWERS = ["Yes.", "There is no dog", "No, there is not.", "", "I cannot tell", "Yes, there is a cat."]
LABELS = ["yes", "yes", "no", "no", "yes", "no"]


def test_parsers_on_the_edge_cases():
    assert [pope.parse_original(a) for a in ANSWERS] == ["yes", "no", "no", "yes", "yes", "yes"]
    assert [pope.parse_strict(a) for a in ANSWERS] == ["yes", "unknown", "no", "unknown", "unknown", "yes"]
    assert [pope.parse_exclusive(a) for a in ANSWERS] == ["yes", "no", "no", "unknown", "unknown", "yes"]
    assert pope.parse_exclusive("Yes, but it isn't a dog.") == "unknown"   # both: refuses to guess
    # the original is case-sensitive: "No" and "not" count, a capital "Not" does not
    assert pope.parse_original("It is not.") == "no" and pope.parse_original("Not sure, maybe.") == "yes"


def test_original_parser_metrics_hand_computed():
    r = pope.pope_scores([pope.parse_original(a) for a in ANSWERS], LABELS)
    # preds y n n y y y vs labels y y n n y n: TP 2, FP 2, TN 1, FN 1
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert r["yes_ratio"] == pytest.approx(4 / 6)   # of the predictions, not of the labels (which is 3/6)


def test_strict_parser_counts_unknown_as_wrong():
    r = pope.pope_scores([pope.parse_strict(a) for a in ANSWERS], LABELS)
    # preds y u n u u y: TP 1, FP 1, TN 1, unknown 3 (two on "yes" labels: false negatives)
    assert r["unknown"] == 3
    assert r["accuracy"] == pytest.approx(2 / 6)
    assert r["precision"] == pytest.approx(1 / 2)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(0.4)
    assert r["yes_ratio"] == pytest.approx(2 / 6)


def test_per_split_and_mean_over_splits():
    preds, labels = ["yes", "no", "yes", "yes"], ["yes", "no", "yes", "no"]
    r = pope.pope_scores(preds, labels, ["random", "random", "adversarial", "adversarial"])
    assert r["per_split"]["random"]["accuracy"] == 1.0
    assert r["per_split"]["adversarial"]["accuracy"] == 0.5
    assert r["per_split"]["adversarial"]["precision"] == 0.5
    assert r["accuracy"] == pytest.approx(0.75) and r["precision"] == pytest.approx(0.75)
    assert r["pooled"]["precision"] == pytest.approx(2 / 3)      # pooled differs from the mean of splits
    assert list(r["per_split"]) == ["random", "adversarial"]


def test_pope_loaders_and_scoring_of_an_answer_file():
    qs = pope.load_questions(DATA / "pope" / "coco_pope_random.jsonl")
    assert len(qs) == 6 and qs[0].split == "random" and qs[2].label == "no"
    answers = pope.load_answers(DATA / "pope" / "answers.jsonl")
    assert answers["4"] == ""
    r = pope.score_answers(qs, answers, "exclusive")
    # preds y n n u u y: TP 1, FN 2, TN 1, FP 1
    assert (r["accuracy"], r["recall"], r["unknown"], r["missing"]) == (pytest.approx(2 / 6), pytest.approx(1 / 3), 2, 0)


def test_pope_loader_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"answers_bad.jsonl, line 2: not valid JSON"):
        pope.load_answers(DATA / "pope" / "answers_bad.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "a", "text": "t", "label": "yes"}\n'
                                      '{"question_id": 2, "image": "a", "text": "t"}\n')
    with pytest.raises(DataError, match=r"q.jsonl, line 2: missing field\(s\) label"):
        pope.load_questions(tmp_path / "q.jsonl")
    (tmp_path / "q2.jsonl").write_text('{"question_id": 1, "image": "a", "text": "t", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"line 1: label is 'maybe'"):
        pope.load_questions(tmp_path / "q2.jsonl")
    with pytest.raises(DataError, match="no such POPE question file"):
        pope.load_questions(tmp_path / "missing.jsonl")


# --- AMBER ---------------------------------------------------------------------------------------------

def amber_fixture():
    d = DATA / "amber"
    vocab = amber.Vocabulary(amber.load_association(d / "relation.json"), amber.load_safe_words(d / "safe_words.txt"))
    return amber.load_responses(d / "responses.json"), amber.load_annotations(d / "annotations.json"), vocab


def test_amber_loaders():
    d = DATA / "amber"
    qs = amber.load_queries(d / "query_all.json")
    assert [q.id for q in qs] == [1, 2, 1005, 1006, 1007, 1008] and qs[0].image == "AMBER_1.jpg"
    ann = amber.load_annotations(d / "annotations.json")
    assert ann[1]["hallu"] == ["cat", "car"] and ann[1007]["type"] == "discriminative-attribute-state"


def test_amber_generative_hand_computed():
    responses, ann, vocab = amber_fixture()
    # 1: "puppy" names the dog, "tree" true, "cat" hallucinated, "grass" a safe word; 2: "cars" -> car
    assert vocab.nouns(responses[1]) == ["puppy", "tree", "cat"]
    g = amber.generative_scores(responses, ann, vocab)
    assert g["chair"] == pytest.approx(1 / 4)     # 1 of 4 nouns
    assert g["cover"] == pytest.approx(3 / 4)     # dog, tree of 1; car of 2 (tree missed)
    assert g["hal"] == pytest.approx(1 / 2)
    assert g["cog"] == pytest.approx(1 / 3)       # cat of {cat, car}; nothing of {dog}


def test_amber_discriminative_no_is_positive():
    responses, ann, vocab = amber_fixture()
    d = amber.discriminative_scores(responses, ann)
    # preds n n y y vs truth n y n y, "no" positive: TP 1, FP 1, FN 1, TN 1
    assert (d["accuracy"], d["precision"], d["recall"], d["f1"]) == (0.5, 0.5, 0.5, 0.5)
    ex = d["per_dimension"]["existence"]
    assert (ex["precision"], ex["recall"]) == (0.5, 1.0)
    assert set(d["per_dimension"]) == {"existence", "attribute", "relation"}
    assert amber.score_all(responses, ann, vocab)["amber_score"] == pytest.approx((1 - 0.25 + 0.5) / 2)


def test_amber_annotation_errors(tmp_path):
    (tmp_path / "a.json").write_text('[{"id": 1, "type": "discriminative-existence", "truth": "maybe"}]')
    with pytest.raises(DataError, match=r"a.json: entry 0 \(id 1\) has truth 'maybe'"):
        amber.load_annotations(tmp_path / "a.json")


# --- grounding -----------------------------------------------------------------------------------------

def test_grounding_items_and_scores():
    items = refcoco.load_items(DATA / "refcoco" / "items.jsonl")
    assert items[0].candidates[1] == (6, 2, 9, 4) and items[0].gold == (6, 2, 9, 4)
    assert items[1].gold == (5, 2, 9, 4)
    heat = np.zeros((10, 10))
    heat[2:4, 6:9] = 1.0
    assert refcoco.pick_box(heat, items[0].candidates) == 1
    r = refcoco.grounding_scores([heat, heat], items)
    # both pick (6,2,9,4): IoU 1 with the first gold, 6/8 with the second
    assert r["accuracy"] == 1.0 and r["miou"] == pytest.approx((1 + 0.75) / 2)
    with pytest.raises(DataError, match=r"bad_gold.jsonl, line 1: gold index 3"):
        refcoco.load_items(DATA / "refcoco" / "bad_gold.jsonl")
