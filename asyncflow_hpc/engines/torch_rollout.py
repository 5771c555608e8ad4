"""Native torch rollout engine: KV-cached sampling on CPU/CUDA/NPU, one prompt group per batch.

Each sample draws from its own `torch.Generator(seed)`, and a batch is exactly one group (the n
samples of one prompt, no padding), so a sample's tokens do not depend on the rank or on what else
was generated. Behaviour log-probs are log softmax(logits / temperature) at the drawn token: the
same distribution the trainer recomputes (top-p/top-k truncation is not reflected in them).
"""

from __future__ import annotations

from typing import Any, Iterable

from asyncflow_hpc.engines.base import Generation, RolloutEngine, SamplingParams
from asyncflow_hpc.models.hf import forward_kwargs_cache_name


def group_runs(prompts: list[list[int]]) -> list[tuple[int, int]]:
    """(start, end) of each run of identical consecutive prompts: the batching units."""
    runs, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            runs.append((start, i))
            start = i
    return runs


def filter_logits(logits: Any, top_k: int, top_p: float) -> Any:
    """Mask logits outside top-k / the top-p nucleus with -inf (rows independent)."""
    import torch

    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token if the mass before it already reaches top_p (the first token always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class TorchRolloutEngine(RolloutEngine):
    """Generates with a HF causal LM held in this process (shared with the trainer when colocated)."""

    def __init__(self, model: Any, *, device: str = "cpu", use_cache: bool = True, version: int = 0):
        self.model = model
        self.device = device
        self.use_cache = use_cache
        self.version = version
        self._cache_kw = forward_kwargs_cache_name(model)

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        import torch

        was_training = self.model.training
        self.model.eval()
        out: list[Generation] = []
        try:
            with torch.no_grad():
                for start, end in group_runs(prompts):
                    out.extend(self._generate_group(prompts[start], params, seeds[start:end]))
        finally:
            self.model.train(was_training)
        return out

    def _forward_last(self, ids: Any, cache: Any) -> tuple[Any, Any]:
        if not self.use_cache:
            return self.model(input_ids=ids, use_cache=False).logits[:, -1].float(), None
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_kw: cache})
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[:, -1].float(), new_cache

    def _generate_group(self, prompt: list[int], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        import torch

        n = len(seeds)
        if not prompt:
            raise ValueError("generate: empty prompt")
        seq = torch.tensor([prompt] * n, dtype=torch.long, device=self.device)
        gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        stop = set(params.stop_token_ids)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        done = [False] * n
        logits, cache = self._forward_last(seq, None)
        for step in range(params.max_new_tokens):
            nxt = self._sample(logits, params, gens, done)
            lp = torch.log_softmax(logits / (1.0 if params.greedy else params.temperature), dim=-1)
            for i in range(n):
                if done[i]:
                    continue
                tok = int(nxt[i])
                tokens[i].append(tok)
                logps[i].append(float(lp[i, tok]))
                done[i] = tok in stop
            if all(done) or step == params.max_new_tokens - 1:
                break
            # Finished rows keep decoding (their tokens are discarded) so the batch shape, and with it
            # every row's arithmetic, does not depend on when other rows stopped.
            step_ids = nxt.view(n, 1)
            if self.use_cache:
                logits, cache = self._forward_last(step_ids, cache)
            else:
                seq = torch.cat([seq, step_ids], dim=1)
                logits, cache = self._forward_last(seq, None)
        return [Generation(response_ids=t, logprobs=l, length=len(t), finished=bool(t) and t[-1] in stop)
                for t, l in zip(tokens, logps)]

    @staticmethod
    def _sample(logits: Any, params: SamplingParams, gens: list, done: list[bool]) -> Any:
        import torch

        if params.greedy:
            return logits.argmax(dim=-1)
        scaled = filter_logits(logits / params.temperature, params.top_k, params.top_p)
        probs = torch.softmax(scaled, dim=-1)
        picks = torch.zeros(len(gens), dtype=torch.long, device=logits.device)
        for i, g in enumerate(gens):
            if not done[i]:  # a finished row's generator is not advanced
                picks[i] = torch.multinomial(probs[i], 1, generator=g)[0]
        return picks

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        load_named_tensors(self.model, named_tensors)
        self.version = version


def load_named_tensors(model: Any, named_tensors: Iterable[tuple[str, Any]]) -> int:
    """Copy full tensors into `model` by state-dict name; unknown names or shapes are errors."""
    import torch

    state = model.state_dict()
    count = 0
    with torch.no_grad():
        for name, tensor in named_tensors:
            if name not in state:
                raise KeyError(f"load_weights: model has no tensor named {name!r}")
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise ValueError(f"load_weights: {name} has shape {tuple(tensor.shape)}, model expects "
                                 f"{tuple(state[name].shape)}")
            state[name].copy_(tensor.to(device=state[name].device, dtype=state[name].dtype))
            count += 1
    return count
