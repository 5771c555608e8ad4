"""vLLM (CUDA) and vllm-ascend (NPU) rollout adapters; vllm is imported only when one is built.

Per-sample seeds go to vLLM as per-request `SamplingParams(seed=...)`, so a sample does not depend
on batch composition (vLLM's per-request generators). Weights arrive as full named tensors (the
weight broadcast) and are handed to the model's own `load_weights`, which maps HF names to vLLM's
fused layout.
"""

from __future__ import annotations

from typing import Any, Iterable

from asyncflow_hpc.engines.base import Generation, RolloutEngine, SamplingParams
from asyncflow_hpc.errors import ConfigError


def _import_vllm(ascend: bool) -> Any:
    try:
        if ascend:
            import vllm_ascend  # noqa: F401  (registers the NPU platform with vLLM)
        import vllm
    except ImportError as exc:
        need = "vllm-ascend (with torch_npu and CANN)" if ascend else "vllm (on a CUDA machine)"
        raise ConfigError(f"rollout.engine={'vllm_ascend' if ascend else 'vllm'}: cannot import {need}: {exc}; "
                          f"install it or set rollout.engine=torch") from None
    return vllm


class VLLMRolloutEngine(RolloutEngine):
    """vLLM's offline `LLM` in this process, loaded from the local model directory."""

    def __init__(self, model_path: str, *, dtype: str = "float32", gpu_memory_utilization: float = 0.4,
                 max_model_len: int = 4096, ascend: bool = False, seed: int = 0, version: int = 0):
        self.vllm = _import_vllm(ascend)
        self.llm = self.vllm.LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                 max_model_len=max_model_len, seed=seed, enforce_eager=True,
                                 tokenizer=model_path, skip_tokenizer_init=True)
        self.version = version

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        sps = [self.vllm.SamplingParams(
            n=1, seed=int(s) % (2 ** 63), max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, logprobs=0,
            stop_token_ids=list(params.stop_token_ids), detokenize=False) for s in seeds]
        inputs = [{"prompt_token_ids": p} for p in prompts]
        outs = self.llm.generate(inputs, sps, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [float(step[tok].logprob) for step, tok in zip(c.logprobs or [], ids)]
            result.append(Generation(response_ids=ids, logprobs=lps, length=len(ids),
                                     finished=bool(ids) and ids[-1] in params.stop_token_ids))
        return result

    def _model(self) -> Any:
        eng = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model"):
            obj: Any = eng
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                continue
        return None

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        named = list(named_tensors)
        model = self._model()
        if model is not None:
            model.load_weights(weights=named)
        else:  # vLLM V1: reach the worker through collective_rpc
            self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights=named))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.version = version
