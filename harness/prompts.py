"""Decoder prompts: LLM-Adapters' commonsense format inside the Alpaca template, in three styles.

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    Please choose the correct answer to the question: ...

    Answer1: ...

    Answer2: ...

    Answer format: answer1/answer2

    ### Response:
    the correct answer is answer2

Three styles: "llm_adapters" (continuations "the correct answer is answer1", ...; PIQA says solution1/2, BoolQ
true/false), "letter" (options listed as "A. ...", continuations "A", "B", ...) and "text" (no option list; each
continuation is the option's own text, the classic cloze scoring, where length normalisation matters). A trainer
scores an example by the log-likelihood of each continuation after the prompt, summed or divided by its length.
Departures from LLM-Adapters: BoolQ's passage is given as the template's "### Input:" (LLM-Adapters leaves it
out, which turns reading comprehension into recall); the template has no stray indentation; options are always
separated by blank lines. ASDiv prompts hold the problem and expect "the answer is {answer}"; a model answers by
greedy generation, and its answer is the last number it writes (`Task.answer_of`, `harness.metrics.extract_number`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks import Example

PROMPT_STYLES = ("llm_adapters", "letter", "text")


@dataclass(frozen=True)
class Prompt:
    text: str  # ends with "### Response:\n"
    continuations: tuple[str, ...]  # one per option (generation: the one target)
    target: int  # index of the right continuation


ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

# wording -> (lead sentence, option marker of LLM-Adapters' format)
WORDINGS = {
    "boolq": ("Please answer the following question with true or false, question:", None),
    "solution": ("Please choose the correct solution to the question:", "solution"),
    "answer": ("Please choose the correct answer to the question:", "answer"),
    "math": (None, None),
}


def decoder_prompt(wording: str | None, example: "Example", style: str = "llm_adapters") -> Prompt:
    """The prompt text and one continuation per option, in the given style (see this module's docstring)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"Unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}.")
    if wording is None:
        raise ValueError("This task has no decoder prompt format: it is scored with a classification head "
                         "(see encoder_input).")
    if wording == "math":
        instruction = f"{example.text_pair} {example.text}"
        return Prompt(ALPACA.format(instruction=instruction), (f"the answer is {example.answer}",), 0)

    lead, marker = WORDINGS[wording]
    if wording == "boolq":
        question = example.text.rstrip("?") + "?"
        context = example.text_pair  # as the template's Input, not in the instruction
    else:
        question = f"{example.text_pair} {example.text}" if example.text_pair else example.text
        context = None
    instruction, continuations = _instruction(lead, marker, question, example.options, style)
    template = ALPACA if context is None else ALPACA_WITH_INPUT
    return Prompt(template.format(instruction=instruction, input=context), continuations, int(example.label))


def _instruction(lead, marker, question, options, style) -> tuple[str, tuple[str, ...]]:
    if style == "text":
        return f"{lead} {question}", tuple(options)
    if style == "letter":
        letters = "ABCDE"[: len(options)]
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))
        return f"{lead} {question}\n\n{listed}\n\nAnswer format: {'/'.join(letters)}", tuple(letters)
    if marker is None:  # BoolQ: the answer is the option itself
        names = tuple(options)
        return (f"{lead} {question}\n\nAnswer format: {'/'.join(names)}",
                tuple(f"the correct answer is {name}" for name in names))
    names = tuple(f"{marker}{i + 1}" for i in range(len(options)))
    listed = "\n\n".join(f"{name.capitalize()}: {option}" for name, option in zip(names, options))
    return (f"{lead} {question}\n\n{listed}\n\nAnswer format: {'/'.join(names)}",
            tuple(f"the correct answer is {name}" for name in names))
