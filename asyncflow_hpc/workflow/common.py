"""Pieces shared by the sync and async workflows: seeds, prompt schedule, task setup, rows, evaluation.

Reproducibility rules (../shared/DESIGN.md): a row's seed is derive_seed(run seed, step, prompt id,
sample index); the prompt id is the global draw index (step * prompts_per_step + j), unique within
a run; the dataset example behind it comes from a per-epoch permutation of the run seed. So any
row can be regenerated, whichever rank produced it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from asyncflow_hpc.data.loaders import Example
from asyncflow_hpc.engines.base import Generation, Row
from asyncflow_hpc.seeds import derive_seed, example_index, step_prompt_ids  # noqa: F401 (the rules live there)


@dataclass
class Task:
    """Everything a rank needs to roll out and score: tokenizer, model, data, reward."""

    tokenizer: Any
    model: Any
    train: list[Example]
    test: list[Example]
    reward_fn: Callable[[str, str, str], float]
    prompt_ids: Callable[[Example], list[int]]
    prompt_text: Callable[[Example], str]
    skipped_long: int = 0  # training prompts longer than data.max_prompt_tokens (reported at start)


def build_task(cfg: Any, device: str, *, weights: bool = True) -> Task:
    """Model, tokenizer, data and reward from the JobConfig (the synthetic task when data.train_path is empty).
    weights=False: the model is built on the meta device (layout only), for a rank whose engine loads the
    weights itself. Prompts are rendered (template, chat template) and length-checked once, here."""
    from asyncflow_hpc.data import synthetic
    from asyncflow_hpc.data.loaders import load_examples
    from asyncflow_hpc.errors import ConfigError
    from asyncflow_hpc.models.hf import build_policy, shape_only_model
    from asyncflow_hpc.models.tokenizer import CharTokenizer, load_tokenizer
    from asyncflow_hpc.rewards.math_verify import math_reward
    from asyncflow_hpc.rewards.registry import make_reward_fn

    d = cfg.data
    if d.train_path:
        if not cfg.model.path:
            raise ConfigError(f"data.train_path={d.train_path!r} needs model.path (a local HF model directory "
                              f"with its tokenizer); the tiny embedded model only covers the synthetic task")
        train = load_examples(d.train_path, question_key=d.question_key, answer_key=d.answer_key)
        if d.test_path:
            test = load_examples(d.test_path, question_key=d.question_key, answer_key=d.answer_key,
                                 limit=d.eval_size if d.eval_size else 1)
        else:
            test, train = train[:d.eval_size], train[d.eval_size:]
        verifier = math_reward
        tok0 = None
    else:
        train, test = synthetic.make_task(d.synthetic_task, d.synthetic_digits, d.synthetic_train,
                                          d.synthetic_test, cfg.run.seed)
        natural = d.synthetic_task in synthetic.NATURAL_TASKS
        if natural and not cfg.model.path:
            raise ConfigError(f"data.synthetic_task={d.synthetic_task} is phrased in words: it needs model.path "
                              f"(a model with its own tokenizer)")
        verifier = math_reward if natural else synthetic.exact_reward
        tok0 = None if natural else CharTokenizer(synthetic.ALPHABET)
    if weights or not cfg.model.path:
        model, tok = build_policy(cfg.model, tok0, device)
    else:
        from asyncflow_hpc.models.hf import expand_path

        model, tok = shape_only_model(cfg.model.path, cfg.model.dtype), load_tokenizer(expand_path(cfg.model.path))
    if d.chat_template and not tok.has_chat_template:
        raise ConfigError(f"data.chat_template=true but the tokenizer of {cfg.model.path or 'the tiny model'} has "
                          f"no chat template; set data.chat_template=false")
    prompts = PromptRenderer(tok, d.prompt_template, d.chat_template)
    keep = [ex for ex in train if len(prompts.ids(ex)) <= d.max_prompt_tokens]
    long_test = sum(len(prompts.ids(ex)) > d.max_prompt_tokens for ex in test)
    if not keep:
        raise ConfigError(f"data.max_prompt_tokens={d.max_prompt_tokens}: every training prompt of "
                          f"{d.train_path or 'the synthetic task'} is longer")
    if long_test:
        raise ConfigError(f"data.max_prompt_tokens={d.max_prompt_tokens}: {long_test} held-out prompts of "
                          f"{d.test_path or d.train_path} are longer (they cannot be skipped without changing "
                          f"the evaluation); raise it")
    task = Task(tokenizer=tok, model=model, train=keep, test=test, reward_fn=make_reward_fn(cfg.reward, verifier),
                prompt_ids=prompts.ids, prompt_text=prompts.text)
    task.skipped_long = len(train) - len(keep)
    return task


class PromptRenderer:
    """Prompt text and token ids of an example, rendered once (template, then the chat template if asked)."""

    def __init__(self, tok: Any, template: str, chat: bool):
        self.tok, self.template, self.chat = tok, template, chat
        self._ids: dict[tuple[str, str], list[int]] = {}

    def text(self, ex: Example) -> str:
        return self.template.replace("{question}", ex.question)

    def ids(self, ex: Example) -> list[int]:
        key = (ex.question, ex.reference)
        got = self._ids.get(key)
        if got is None:
            t = self.text(ex)
            got = self.tok.encode_chat(t) if self.chat else self.tok.encode(t)
            self._ids[key] = got
        return got


def generate_groups(engine: Any, task: Task, prompt_ids: Sequence[int], *, run_seed: int, step: int, n: int,
                    params: Any, version: int) -> list[Row]:
    """Generate and score the n samples of each global prompt id (one group = one engine batch)."""
    rows: list[Row] = []
    for pid in prompt_ids:
        ex = task.train[example_index(run_seed, pid, len(task.train))]
        p = task.prompt_ids(ex)
        seeds = [derive_seed(run_seed, step, pid, k) for k in range(n)]
        gens: list[Generation] = engine.generate([p] * n, params, seeds)
        text = task.prompt_text(ex)
        for k, g in enumerate(gens):
            resp = task.tokenizer.decode(g.response_ids)
            rows.append(Row(prompt_id=pid, sample_index=k, prompt_ids=p, response_ids=g.response_ids,
                            behav_logprobs=g.logprobs, version=version,
                            reward=task.reward_fn(text, resp, ex.reference),
                            extra={"example": ex.id, "finished": g.finished}))
    return rows


def group_advantages(rewards: Any, algo_cfg: Any) -> Any:
    """GRPO advantages of ONE prompt group, from the rewards as the store holds them (float32), as float64:
    exactly what assign_advantages gives these rows inside any batch (the group statistics use exact
    sums), so the reward stage can store them as soon as the group is scored."""
    from asyncflow_hpc.algorithms.advantages import grpo_advantages

    rs = [float(r) for r in np.asarray(rewards, dtype=np.float32)]
    return np.asarray(grpo_advantages(rs, [0] * len(rs), norm_std=algo_cfg.norm_adv_by_std, eps=algo_cfg.adv_eps),
                      dtype=np.float64)


def assign_advantages(rows: list[Row], algo_cfg: Any) -> None:
    """Fill row.advantage for a whole global batch (algorithms/advantages.py: compute_advantages)."""
    from asyncflow_hpc.algorithms.advantages import compute_advantages

    adv = compute_advantages([r.reward for r in rows], [r.prompt_id for r in rows],
                             [len(r.response_ids) for r in rows], algo_cfg)
    for r, a in zip(rows, adv):
        r.advantage = a


def evaluate_local(engine: Any, task: Task, examples: Sequence[Example], params: Any) -> tuple[float, float, int]:
    """Greedy answers to `examples`: (sum of rewards, number correct (reward > 0.5), count). One engine call:
    each distinct prompt is its own group (the torch engine batches per group; vLLM batches them all)."""
    total, correct = 0.0, 0
    gens = engine.generate([task.prompt_ids(ex) for ex in examples], params, [0] * len(examples)) if examples else []
    for ex, g in zip(examples, gens):
        r = task.reward_fn(task.prompt_text(ex), task.tokenizer.decode(g.response_ids), ex.reference)
        total += r
        correct += int(r > 0.5)
    return total, correct, len(examples)


def sft_pairs(task: Task, step: int, batch: int, run_seed: int, targets: str) -> list[tuple[list[int], list[int]]]:
    """Supervised warm-up batch: prompt -> answer + eos. targets='shuffled' pairs each prompt with the
    answer of a random OTHER example, which teaches the answer format but not the task."""
    rng = random.Random(derive_seed(run_seed, -2, step, 0))
    out = []
    for _ in range(batch):
        ex = task.train[rng.randrange(len(task.train))]
        src = task.train[rng.randrange(len(task.train))] if targets == "shuffled" else ex
        out.append((task.prompt_ids(ex), task.tokenizer.encode(src.answer) + [task.tokenizer.eos_id]))
    return out
