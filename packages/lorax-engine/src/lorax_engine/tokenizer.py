"""Tokenizer, chat template and generation config of a checkpoint, through transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorax_engine.errors import ValidationError


class TokenizerInfo:
    """The tokenizer plus the ids that end generation."""

    def __init__(self, path: Path, model_eos_ids: tuple[int, ...]) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        eos: set[int] = set(model_eos_ids)
        gen_cfg = path / "generation_config.json"
        if gen_cfg.exists():
            value = json.loads(gen_cfg.read_text()).get("eos_token_id")
            if isinstance(value, list):
                eos.update(int(v) for v in value)
            elif value is not None:
                eos.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(eos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """``[{id, text, start, stop}]`` with character offsets into ``text``."""
        enc = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        out: list[dict[str, Any]] = []
        for tid, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            piece = text[start:stop] if stop > start else self.tokenizer.decode([tid])
            out.append({"id": int(tid), "text": piece, "start": int(start), "stop": int(stop)})
        return out

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template: str | None = None,
    ) -> str:
        """Render a conversation with the model's template (or ``template``, an adapter's own)."""
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValidationError("this model has no chat template")
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
        except (
            Exception
        ) as exc:  # jinja errors (e.g. a template that rejects a role) are the caller's
            raise ValidationError(f"chat template failed: {exc}") from exc
        return str(prompt)
