"""Turn tasks into text: the demonstrations a hypernetwork reads and the query the frozen model answers.

``demos_text`` reproduces the "Def+kPos" encoding of Super-NaturalInstructions (Wang et al., 2022; the Tk-Instruct
collator): a definition, then numbered positive examples, each line closed with a period unless it already ends
in punctuation. Example with one positive::

    Definition: Add one to the number.

     Positive Example 1 -
    Input: 3.
     Output: 4.

"""

from __future__ import annotations

import string

from ..errors import RecipeError
from .tasks import Example, Task


def _close(text: str) -> str:
    """Append a period unless the text already ends in punctuation (S-NI's rule)."""
    return text if text and text[-1] in string.punctuation else text + "."


def demos_text(task: Task, num_positive: int = 2, include_definition: bool = True, style: str = "sni") -> str:
    """The S-NI "Def+{num_positive}Pos" text of ``task`` (first reference output of each positive example).

    ``style="compact"`` writes the positives as ``x>y`` pairs joined by `` ; `` (after the definition, if any): a
    short encoding for tiny byte-level models on a CPU, where every character is a token.
    """
    if num_positive < 0:
        raise ValueError(f"num_positive must be >= 0, got {num_positive}")
    if style == "compact":
        pairs = " ; ".join(f"{e.input.strip()}>{e.outputs[0].strip()}" for e in task.positives[:num_positive])
        return (task.definition.strip() + " | " if include_definition else "") + pairs + " | "
    if style == "shots":  # P3 "16-Shots": the prompted examples concatenated, input then target
        shots = "\n\n".join(f"{e.input.strip()}\n{e.outputs[0].strip()}" for e in task.positives[:num_positive])
        return (task.definition.strip() + "\n\n" if include_definition and task.definition else "") + shots
    if style != "sni":
        raise ValueError(f"demo style must be 'sni', 'compact' or 'shots', got {style!r}")
    parts = []
    if include_definition:
        parts.append(_close("Definition: " + task.definition.strip()) + "\n\n")
    for number, example in enumerate(task.positives[:num_positive], start=1):
        block = _close(f" Positive Example {number} -\nInput: {example.input.strip()}") + "\n"
        block = _close(block + f" Output: {example.outputs[0].strip()}") + "\n"
        parts.append(block + "\n")
    return "".join(parts)


# what FT-Few-Shot puts between the (possibly truncated) demos and the query, per demo style: for "sni" the
# phrase Tk-Instruct puts before its query
DEMOS_QUERY_SEPARATOR = {"sni": "Now complete the following example -\n", "compact": "|| ", "shots": "\n\n"}

# the prompt a causal main model continues with the answer, per demo style: the query written as the demos write
# an input, up to where they write its output (a T5 encodes the query alone and decodes the answer)
CAUSAL_PROMPT = {"sni": "Input: {input}\nOutput: ", "compact": "{input}>", "shots": "{input}\n"}

# what a chat prompt (data.prompt, hypergen/data/chat.py) writes of the query in the user's turn, after the demos
# when they are there: the query as the demos write an input, up to where they write its output (the reply is the
# assistant's turn, so no trailing space or newline)
CHAT_QUERY = {"sni": "Input: {input}\nOutput:", "compact": "{input}>", "shots": "{input}"}


def query_text(example: Example, template: str = "{input}") -> str:
    """The text the frozen model reads for one instance: ``template`` with ``{input}`` filled in."""
    try:
        return template.format(input=example.input)
    except (KeyError, IndexError, ValueError) as exc:
        raise RecipeError(f"query template {template!r} is invalid ({exc!r}); it may only use the field {{input}}") from None
