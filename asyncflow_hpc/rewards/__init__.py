"""Reward functions: rule-based verifiers and user functions named by dotted path."""
