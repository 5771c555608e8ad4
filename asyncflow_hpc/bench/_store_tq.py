"""The GRPO-row workload on the PyPI `transferqueue` package (run with the python of its own venv).

    ~/.cache/asyncflow_hpc/tq_venv/bin/python asyncflow_hpc/bench/_store_tq.py --rows 2048 --batch 64
Standalone on purpose (imports neither asyncflow_hpc nor mpi4py). Set-up per ../shared/DESIGN.md:
ray.init(num_cpus=8), controller polling_mode, 2 storage units; put a TensorDict batch, then
get_meta(mode="fetch") + get_data until every row came back. Warm-up batches are not timed.
Prints one JSON line: rows_per_s, gbps, get_p50_ms, get_p99_ms.
"""

import argparse
import json
import os
import sys
import time

PROMPT, RESPONSE = 512, 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    import torch
    import transfer_queue
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    transfer_queue.init(OmegaConf.create({"controller": {"polling_mode": True},
                                          "backend": {"SimpleStorage": {"num_data_storage_units": 2}}}))
    client = transfer_queue.get_client()
    g = torch.Generator().manual_seed(0)
    B = args.batch
    td = TensorDict({"prompt_ids": torch.randint(0, 50000, (B, PROMPT), dtype=torch.int32, generator=g),
                     "response_ids": torch.randint(0, 50000, (B, RESPONSE), dtype=torch.int32, generator=g),
                     "logp": -torch.rand((B, RESPONSE), generator=g),
                     "reward": torch.rand((B,), generator=g)}, batch_size=[B])
    fields = ["prompt_ids", "response_ids", "logp", "reward"]
    row_bytes = (PROMPT + 2 * RESPONSE + 1) * 4

    def one_batch(part: str) -> float:
        client.put(data=td, partition_id=part)
        got, lat = 0, 0.0
        while got < B:
            t = time.perf_counter()
            meta = client.get_meta(data_fields=fields, batch_size=B, partition_id=part, mode="fetch",
                                   task_name="train")
            if meta is None or len(meta) == 0:
                time.sleep(1e-3)
                continue
            data = client.get_data(meta)
            lat += time.perf_counter() - t
            got += data.batch_size[0]
        return lat

    for i in range(args.warmup):
        one_batch(f"warm{i}")
    lats = []
    t0 = time.perf_counter()
    n = args.rows // B
    for i in range(n):
        lats.append(one_batch(f"p{i}"))
    secs = time.perf_counter() - t0
    lats.sort()
    print(json.dumps({"rows": n * B, "seconds": secs, "rows_per_s": n * B / secs,
                      "gbps": n * B * row_bytes / secs / 1e9, "get_p50_ms": lats[len(lats) // 2] * 1e3,
                      "get_p99_ms": lats[min(len(lats) - 1, int(len(lats) * 0.99))] * 1e3}), flush=True)
    try:
        transfer_queue.close() if hasattr(transfer_queue, "close") else None
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
