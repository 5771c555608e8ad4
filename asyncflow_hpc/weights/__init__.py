"""Weight sync from the trainer leader to rollout ranks: buckets, sender, receiver (version, checksum, timeout)."""
