"""Turn sampled (task, queries) groups into tensors.

A batch holds T tasks and B >= T examples; ``task_index[b]`` is the task row of example b, so the hypernetwork
runs once per task and its parameters are shared by that task's queries.

A T5 reads the tokenizer's encoding of the query (its special tokens, e.g. a closing ``</s>``) and decodes the
target. A causal LM (``causal=True``) continues one sequence, so the special tokens are placed by hand whatever the
tokenizer's own post-processing: ``[BOS] query-prompt`` then ``answer [EOS]``, where the query prompt is the demo
style's :data:`~.format.CAUSAL_PROMPT` (so that a query reads like an answered demo), BOS only where the tokenizer
has one (never twice), and the demos the hypernetwork reads are ``[BOS] demos``. Everything is right-padded.

With a chat prompt (``data.prompt``, :mod:`.chat`: "chat", or "auto" for a tokenizer with a chat template) the
causal LM reads one user turn of the tokenizer's chat template instead, holding what it reads before answering
(the demos and separator when they are in the input, then the query as :data:`~.format.CHAT_QUERY` writes it),
with the template's generation prompt and no BOS added by hand; the answer is ``answer [end-of-turn]``. The
hypernetwork still reads ``[BOS] demos``: a document to encode, not a turn to answer (a template would spend its
system prompt's tokens of every demos budget on nothing the task says).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import HypergenError
from .chat import ChatPrompt, resolve_prompt
from .controls import DemoControl
from .format import CAUSAL_PROMPT, CHAT_QUERY, DEMOS_QUERY_SEPARATOR, demos_text, query_text
from .tasks import Example, Task


@dataclass
class Batch:
    demo_ids: torch.Tensor        # T x n_d
    demo_mask: torch.Tensor       # T x n_d
    task_index: torch.Tensor      # B
    input_ids: torch.Tensor       # B x n_x
    attention_mask: torch.Tensor  # B x n_x
    labels: torch.Tensor | None   # B x n_y, padding = -100
    task_names: list[str]         # T
    references: list[tuple[str, ...]]  # B

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)

    @property
    def num_examples(self) -> int:
        return int(self.input_ids.shape[0])


class Collator:
    """Tokenizes demos (Def+kPos), queries and targets with the recipe's length limits."""

    def __init__(self, tokenizer, data_cfg, *, causal: bool = False, control: DemoControl | None = None) -> None:
        """``causal``: prompts for a decoder-only LM (see the module docstring); ``control``: a demos control
        (``random`` or ``none``) applied to every demos sequence tokenized."""
        self.tokenizer = tokenizer
        self.cfg = data_cfg
        self.causal = causal
        self.control = control
        self._demo_cache: dict[tuple, str] = {}
        self._separator = self._ids(DEMOS_QUERY_SEPARATOR[data_cfg.demo_style])
        # "chat" or "plain": data.prompt resolved for this tokenizer (getattr: a Data built by model_construct)
        self.prompt = resolve_prompt(getattr(data_cfg, "prompt", None) or "auto", tokenizer, causal)
        self._chat = ChatPrompt(tokenizer) if self.prompt == "chat" else None
        self.end_of_turn = self._chat.end_of_turn if self._chat else tokenizer.eos_token_id  # closes a causal answer
        if causal:
            head, tail = CAUSAL_PROMPT[data_cfg.demo_style].split("{input}")
            self._prompt = (self._ids(head), self._ids(tail))
            self._bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
            if self.end_of_turn is None:
                raise HypergenError(f"main_model: the tokenizer {type(tokenizer).__name__} has no eos token; a causal "
                                 "LM's targets end with one")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def demos(self, task: Task) -> str:
        """The demos text of ``task``, cached by its name and demos (P3 tasks get new demos at every draw)."""
        key = (task.name, tuple(task.positives[: self.cfg.num_positive]))
        if key not in self._demo_cache:
            if len(self._demo_cache) > 50_000:
                self._demo_cache.clear()
            self._demo_cache[key] = demos_text(task, self.cfg.num_positive, self.cfg.include_definition,
                                               self.cfg.demo_style)
        return self._demo_cache[key]

    def encode_demos(self, tasks: list[Task]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(demo_ids, demo_mask)``, T x n_d, of the tasks' demos: what the hypernetwork reads for them."""
        texts = [self.demos(t) for t in tasks]
        if self.causal:
            budget = self.cfg.max_demo_length - len(self._bos)
            demo_ids, demo_mask = right_padded([self._bos + self._ids(text)[:budget] for text in texts],
                                               self.tokenizer.pad_token_id)
        else:
            demos = self._encode(texts, self.cfg.max_demo_length)
            demo_ids, demo_mask = demos["input_ids"], demos["attention_mask"]
        if self.control is not None:
            return self.control.demo_batch(demo_ids, demo_mask, texts)
        return demo_ids, demo_mask

    def query_ids(self, query: str) -> list[int]:
        """The token ids of one query, its first ``max_input_length`` tokens kept (for a causal LM inside the
        prompt template, without BOS)."""
        if not self.causal:
            return self.tokenizer(query, max_length=self.cfg.max_input_length, truncation=True)["input_ids"]
        head, tail = self._prompt
        return head + self._ids(query)[: self.cfg.max_input_length] + tail

    def encode_inputs(self, inputs: list[tuple[str | None, str]]):
        """``input_ids``, ``attention_mask`` (B x n_x) of (demos or None, query) pairs, right-padded.

        The query keeps its first ``max_input_length`` tokens, as without demos. Demos come first, cut at the end
        to what the query leaves of ``max_demo_length + max_input_length`` (so the query is never cut for them, as
        in Tk-Instruct), then ``DEMOS_QUERY_SEPARATOR`` of the demo style, then the query (a causal LM's row
        starts with BOS, see the module docstring). Under a demos control, the demos tokens are random ones
        (``random``), or the query comes alone (``none``)."""
        if self._chat is not None:
            return dict(zip(("input_ids", "attention_mask"), right_padded(
                [self._chat_row(demos, query) for demos, query in inputs], self.tokenizer.pad_token_id)))
        rows = []
        for demos, query in inputs:
            ids = self.query_ids(query)
            if demos is not None and not (self.control and self.control.drops_demos):
                budget = self.cfg.max_demo_length + self.cfg.max_input_length - len(ids) - len(self._separator)
                demo_ids = self._ids(demos)[: max(budget, 0)]
                if self.control is not None:
                    demo_ids = self.control.replace_ids(demo_ids, demos)
                ids = demo_ids + self._separator + ids
            rows.append(self._bos + ids if self.causal else ids)
        ids, mask = right_padded(rows, self.tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    def _chat_row(self, demos: str | None, query: str) -> list[int]:
        """One chat-prompt input: the user turn holding [demos + separator +] the query (see the module docstring),
        cut as :meth:`encode_inputs` cuts a plain one (the cut pieces decoded back to text, the turn then
        tokenized as one text, as ``apply_chat_template`` tokenizes it)."""
        query_ids = self._ids(query)
        if len(query_ids) > self.cfg.max_input_length:
            query = self.tokenizer.decode(query_ids[: self.cfg.max_input_length])
        head, tail = CHAT_QUERY[self.cfg.demo_style].split("{input}")
        content = head + query + tail
        ids = self._chat.ids(content)
        if demos is None or (self.control and self.control.drops_demos):
            return ids
        budget = max(self.cfg.max_demo_length + self.cfg.max_input_length - len(ids) - len(self._separator), 0)
        demo_ids = self._ids(demos)
        if self.control is not None:  # random tokens, written as text in the turn
            demos = self.tokenizer.decode(self.control.replace_ids(demo_ids[:budget], demos))
        elif len(demo_ids) > budget:
            demos = self.tokenizer.decode(demo_ids[:budget])
        return self._chat.ids(demos + DEMOS_QUERY_SEPARATOR[self.cfg.demo_style] + content)

    def encode_targets(self, targets: list[str]) -> torch.Tensor:
        """``labels`` (B x n_y, padding -100) of the target texts: their first ``max_target_length`` tokens with
        the tokenizer's special tokens (T5), or for a causal LM the answer's tokens then EOS (a chat prompt: the
        template's end-of-turn token), kept when cut."""
        if not self.causal:
            lab = self._encode(targets, self.cfg.max_target_length)
            return lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        keep = self.cfg.max_target_length - 1
        rows = [self._ids(text)[:keep] + [self.end_of_turn] for text in targets]
        return right_padded(rows, -100)[0]

    def _encode(self, texts: list[str], max_length: int):
        return self.tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")

    def __call__(self, groups: list[tuple[Task, list[Example]]], with_labels: bool = True,
                 demos_in_input: bool | float = False) -> Batch:
        """``demos_in_input``: put the task's demos before each query (fine-tuning baselines); a fraction in
        (0, 1) does so for that share of examples, drawn with Python's ``random`` (checkpointed by the trainer).
        Such an input is demos + separator + query, see :meth:`encode_inputs`."""
        tasks = [task for task, _ in groups]
        demo_ids, demo_mask = self.encode_demos(tasks)
        task_index, inputs, targets, references = [], [], [], []
        for row, (task, examples) in enumerate(groups):
            for example in examples:
                task_index.append(row)
                query = query_text(example)
                with_demos = demos_in_input >= 1 or (demos_in_input > 0 and random.random() < demos_in_input)
                inputs.append((self.demos(task) if with_demos else None, query))
                targets.append(example.outputs[0])
                references.append(tuple(example.outputs))
        enc = self.encode_inputs(inputs)
        labels = self.encode_targets(targets) if with_labels else None
        return Batch(demo_ids, demo_mask, torch.tensor(task_index), enc["input_ids"],
                     enc["attention_mask"], labels, [t.name for t in tasks], references)


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, B x max length, of token-id rows padded on the right with ``pad_id`` (mask 0 there)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask
