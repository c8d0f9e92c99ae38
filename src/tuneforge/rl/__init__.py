"""Shared pieces of the RL stages (ppo, grpo): prompt data, reward sources, sampling, policy evaluation."""
