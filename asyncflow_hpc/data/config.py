"""Configuration of the prompt dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class DataConfig:
    """Prompts to roll out on, and held-out prompts to evaluate on."""

    train_path: str = opt("", "Prompt file (JSONL/parquet, GSM8K-style question/answer); ${VAR} expanded "
                              "(${ASYNCFLOW_GSM8K_DIR} defaults to ../shared/data/gsm8k beside the repo); "
                              "empty = the synthetic task.")
    test_path: str = opt("", "Held-out prompt file (same format); empty with train_path set = hold out "
                             "eval_size prompts of train_path.")
    question_key: str = opt("question", "Field holding the question.")
    answer_key: str = opt("answer", "Field holding the reference answer (GSM8K: '... #### 42').")
    prompt_template: str = opt("{question}", "Prompt text; {question} is substituted.")
    chat_template: bool = opt(False, "Wrap the prompt in the tokenizer's chat template (HF tokenizers only).")
    max_prompt_tokens: int = opt(512, "Prompts longer than this (in tokens) are skipped (counted and reported).")
    prompts_per_step: int = opt(16, "Prompts (groups) per trainer step; rows per step = this * rollout.n.")
    eval_size: int = opt(128, "Held-out prompts evaluated at start and end (greedy); 0 = no evaluation.")
    eval_every: int = opt(0, "Also evaluate every this many steps (0 = only at start and end).")
    # The synthetic task of the embedded default (data.train_path empty).
    synthetic_task: Literal["add_mod", "max", "copy_first", "arith"] = opt(
        "add_mod", "add_mod: 'a+b=' -> (a+b) mod 10; max: largest digit; copy_first: the first digit "
                   "(these three for the tiny model's character tokenizer); arith: 'What is 7 + 12?', "
                   "scored by the math verifier (needs model.path).")
    synthetic_digits: int = opt(2, "Digits in each synthetic prompt (arith: operands go up to 9 * this).")
    synthetic_train: int = opt(2000, "Synthetic training prompts.")
    synthetic_test: int = opt(200, "Synthetic held-out prompts (disjoint from the training prompts when possible).")

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "prompts_per_step", "synthetic_digits", "synthetic_train"):
            if getattr(self, name) < 1:
                raise fail(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_size", "eval_every", "synthetic_test"):
            if getattr(self, name) < 0:
                raise fail(name, f"must be >= 0, got {getattr(self, name)}")
        if "{question}" not in self.prompt_template:
            raise fail("prompt_template", "must contain {question}")
