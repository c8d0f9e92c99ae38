"""Hyper-parameter search with Optuna over any dotted config key (`tuneforge hpo`)."""
