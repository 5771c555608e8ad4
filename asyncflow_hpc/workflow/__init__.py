"""Workflows: the rollout loop, the trainer loop, the synchronous baseline, and the per-rank driver."""
