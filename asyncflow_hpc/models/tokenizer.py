"""Tokenizers behind one small interface: the repo's character tokenizer and local HF tokenizers.

The embedded default uses `CharTokenizer`, generated here from a fixed alphabet (nothing to
download); a model directory saved by `models.hf.save_pretrained` carries it as
`asyncflow_tokenizer.json`. Any other directory is read with `transformers.AutoTokenizer`
(local files only).
"""

from __future__ import annotations

import json
import os
from typing import Protocol

CHAR_TOKENIZER_FILE = "asyncflow_tokenizer.json"
DEFAULT_ALPHABET = "0123456789+-*=?#., abcdefghijklmnopqrstuvwxyz"


class Tokenizer(Protocol):
    eos_id: int
    pad_id: int
    vocab_size: int
    stop_ids: tuple[int, ...]  # generation ends at any of these (eos first)
    has_chat_template: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str) -> None: ...


class CharTokenizer:
    """One token per character; ids 0, 1 are <pad>, <eos>. Unknown characters are an error."""

    SPECIALS = ("<pad>", "<eos>")
    has_chat_template = False

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharTokenizer alphabet has repeated characters")
        self.alphabet = alphabet
        self.pad_id, self.eos_id = 0, 1
        self._to_id = {c: i + len(self.SPECIALS) for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + len(self.SPECIALS)
        self.stop_ids = (self.eos_id,)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._to_id[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"CharTokenizer: character {exc.args[0]!r} is not in the alphabet "
                             f"{self.alphabet!r}") from None

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(self.SPECIALS):
                out.append(self.alphabet[i - len(self.SPECIALS)])
        return "".join(out)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CHAR_TOKENIZER_FILE), "w", encoding="utf-8") as fh:
            json.dump({"type": "char", "alphabet": self.alphabet, "specials": list(self.SPECIALS)}, fh)

    @classmethod
    def load(cls, directory: str) -> "CharTokenizer":
        path = os.path.join(directory, CHAR_TOKENIZER_FILE)
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("type") != "char" or list(data.get("specials", [])) != list(cls.SPECIALS):
            raise ValueError(f"{path}: not an asyncflow character tokenizer file")
        return cls(data["alphabet"])


class HFTokenizer:
    """A local Hugging Face tokenizer (Qwen2, Llama), adapted to the interface above."""

    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        eos = self.tok.eos_token_id
        if eos is None:
            raise ValueError(f"{directory}: tokenizer has no eos token")
        self.eos_id = int(eos)
        self.pad_id = int(self.tok.pad_token_id) if self.tok.pad_token_id is not None else self.eos_id
        self.vocab_size = len(self.tok)
        self.stop_ids = stop_ids_of(directory, self.eos_id)
        self.has_chat_template = bool(getattr(self.tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_chat(self, text: str) -> list[int]:
        """The user message wrapped in the model's chat template, ready for the assistant turn."""
        ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        """Text up to the first stop token."""
        ids = [int(i) for i in ids]
        cut = next((k for k, i in enumerate(ids) if i in self.stop_ids), len(ids))
        return self.tok.decode(ids[:cut], skip_special_tokens=True)

    def save(self, directory: str) -> None:
        self.tok.save_pretrained(directory)


def stop_ids_of(directory: str, eos_id: int) -> tuple[int, ...]:
    """eos first, then every other eos id of the model's generation_config.json (an int or a list there)."""
    ids = [eos_id]
    path = os.path.join(directory, "generation_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            try:
                gen = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
        more = gen.get("eos_token_id")
        for i in (more if isinstance(more, list) else [more] if more is not None else []):
            if int(i) not in ids:
                ids.append(int(i))
    return tuple(ids)


def load_tokenizer(directory: str) -> Tokenizer:
    """The tokenizer stored in a model directory (character tokenizer file first, then HF files)."""
    if os.path.exists(os.path.join(directory, CHAR_TOKENIZER_FILE)):
        return CharTokenizer.load(directory)
    return HFTokenizer(directory)
