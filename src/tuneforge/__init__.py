"""tuneforge: fine-tune LLMs with every method from one config, correct by construction and measured."""

__version__ = "0.1.0"
