from tuneforge.models.load import ALIASES, load_model, load_tokenizer, resolve_model

__all__ = ["ALIASES", "load_model", "load_tokenizer", "resolve_model"]
