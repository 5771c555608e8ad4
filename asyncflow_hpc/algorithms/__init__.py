"""RL losses and advantages as pure functions: GRPO, PPO-clip, decoupled PPO, truncated IS."""
