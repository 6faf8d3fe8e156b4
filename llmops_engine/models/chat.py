"""A base model's own chat template, bound to its tokenizer: how `format: chat` prompts become text.

Training, evaluation and serving all render chat prompts through this one class, so a prompt
is the same string (and so the same tokens) in all three. The template text is part of the
prompt hash (specs/prompt.py), which lets a tuned model notice when it would be served
through another template than the one it was tuned with.

The end of an assistant turn is read from the template itself: render a conversation whose
answer is a probe string and take the first special token after it (ChatML `<|im_end|>`,
Llama 3 `<|eot_id|>`, `</s>`). Training appends it to every answer, generation stops at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import ChatTemplateError

_ANSWER_PROBE = "llmops-answer-probe"
_FIX = ("use `format: text` in the Prompt, or a base model that ships a chat template "
        "(e.g. builtin:smollm2-135m-instruct)")


@dataclass(frozen=True)
class ChatTemplate:
    tokenizer: Any
    model: str  # what the model is called in errors (a ref or a version)
    text: str  # the Jinja template

    def render(self, messages: list[dict[str, str]]) -> str:
        """The conversation as text, ending where the assistant's answer starts."""
        return self._apply(messages, add_generation_prompt=True)

    @cached_property
    def end_of_turn(self) -> str:
        """The token text that closes an assistant turn; the model's EOS when the template
        closes it with plain text only (then EOS is the only stop a model can learn)."""
        user = [{"role": "user", "content": "Hello"}]
        full = self._apply(user + [{"role": "assistant", "content": _ANSWER_PROBE}], add_generation_prompt=False)
        at = full.find(_ANSWER_PROBE)
        if at < 0:
            raise ChatTemplateError(f"{self.model}: its chat template drops the assistant's answer, so there is "
                                    f"nothing to tune on; {_FIX}")
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        closing = self.tokenizer(full[at + len(_ANSWER_PROBE):], add_special_tokens=False)["input_ids"]
        token = next((t for t in closing if t in special), self.tokenizer.eos_token_id)
        return self.tokenizer.convert_ids_to_tokens(token)

    @cached_property
    def end_ids(self) -> list[int]:
        return self.tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]

    def _apply(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja2 errors and the templates' own raise_exception() share no base class
            raise ChatTemplateError(f"the chat template of {self.model} rejects these messages "
                                    f"({type(exc).__name__}: {exc})") from exc


def chat_template_of(tokenizer, model: str) -> ChatTemplate:
    """The tokenizer's chat template; a ChatTemplateError that says what to do when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: apply_chat_template uses "default"
        template = template.get("default")
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"{model} has no chat template, so a Prompt with format: chat cannot render for it; {_FIX}")
    return ChatTemplate(tokenizer, model, template)
