"""Prompts for an instruction-tuned causal LM (``data.prompt``): the query inside the tokenizer's chat template.

``"plain"`` is the collator's template (:data:`~.format.CAUSAL_PROMPT`, for base models and T5); ``"chat"`` writes
what the main model reads before answering as one user message, rendered by the tokenizer's chat template with the
generation prompt (``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, the template placing its
own special tokens), and the answer is the assistant's reply closed by the template's end-of-turn token;
``"auto"`` is chat when the tokenizer has a chat template and the main model is causal, else plain.
"""

from __future__ import annotations

from ..errors import RecipeError

PROMPTS = ("auto", "chat", "plain")
_REPLY = "hypergen-reply-7f3a"  # a reply no template writes itself: what follows it closes the assistant's turn


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt(setting: str, tokenizer, causal: bool) -> str:
    """``"chat"`` or ``"plain"``: what ``data.prompt`` (``setting``) means for this tokenizer and main model; a
    chat prompt the tokenizer or model cannot give is a one-line :class:`RecipeError` naming ``data.prompt``."""
    if setting not in PROMPTS:
        raise RecipeError(f"data.prompt: expected one of {', '.join(PROMPTS)}, got {setting!r}")
    if setting == "auto":
        return "chat" if causal and has_chat_template(tokenizer) else "plain"
    if setting == "chat" and not causal:
        raise RecipeError("data.prompt: 'chat' needs a causal main model (a T5 encodes the query alone); set it to "
                          "'plain' or 'auto'")
    if setting == "chat" and not has_chat_template(tokenizer):
        raise RecipeError(f"data.prompt: 'chat' needs a tokenizer with a chat template, and "
                          f"{type(tokenizer).__name__} has none; set it to 'plain' or 'auto'")
    return setting


class ChatPrompt:
    """One user turn of ``tokenizer``'s chat template, and the token that ends the assistant's reply."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn_id(tokenizer)

    def text(self, content: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def ids(self, content: str) -> list[int]:
        """The ids of the rendered prompt, as ``apply_chat_template(..., add_generation_prompt=True)`` tokenizes it
        (no special tokens added beyond the template's own)."""
        return self.tokenizer(self.text(content), add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int | None:
    """The token the template writes right after an assistant reply when it is a special (added) token, e.g.
    SmolLM2's and Qwen's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``; else the eos id."""
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": _REPLY}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: fall back to eos
        rendered = ""
    if _REPLY in rendered:
        after = tokenizer(rendered.split(_REPLY, 1)[1], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        if after and after[0] in special:
            return after[0]
    return tokenizer.eos_token_id


def stop_at_end_of_turn(main_model, collator) -> None:
    """Make ``main_model.generate`` stop at the collator's end-of-turn token as at eos (instruct models' generation
    configs usually list it already; a template whose turn ends with another token than eos needs it added)."""
    end = getattr(collator, "end_of_turn", None)
    config = getattr(main_model, "generation_config", None)
    if end is None or config is None:
        return
    eos = config.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if end not in eos:
        config.eos_token_id = [*eos, end] if eos else end
