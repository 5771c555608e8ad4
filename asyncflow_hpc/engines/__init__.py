"""Engine adapters: rollout (native torch, vLLM, vllm-ascend) and trainer (torch, MindSpeed), behind small interfaces."""
