"""Inference on runs and models: the engine, `tuneforge chat` and the OpenAI-compatible `tuneforge serve`."""
