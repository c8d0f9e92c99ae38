"""peft, imported when a method first needs it, without the bitsandbytes import peft 0.21.2 makes eagerly.

    peft = load_peft_module()
    with bitsandbytes_hidden():
        model = peft.get_peft_model(model, config)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bitsandbytes_hidden() -> Iterator[None]:
    """peft 0.21.2 imports bitsandbytes (~1.5 s of CPU at start-up, and a kernel-hub warning offline) when peft is
    imported (peft.helpers) and when it wraps a layer (is_bnb_available in tuners/*/model.py), though only bnb's own
    Linear8bitLt / Linear4bit layers need it. Until something has imported bitsandbytes (a QLoRA base is loaded
    through it) no such layer can exist, so peft is kept from importing it; its cached "available" answers (and
    transformers') are cleared on the way out, so a later QLoRA load in the same process finds it again."""
    if "bitsandbytes" in sys.modules:
        yield
        return
    sys.modules["bitsandbytes"] = None  # `import bitsandbytes` raises ImportError, find_spec returns None
    try:
        yield
    finally:
        if sys.modules.get("bitsandbytes", 0) is None:
            del sys.modules["bitsandbytes"]
        for module, names in (("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
                              ("transformers.utils.import_utils", ("is_bitsandbytes_available",))):
            for name in names:
                getattr(getattr(sys.modules.get(module), name, None), "cache_clear", lambda: None)()


def load_peft_module():
    """peft, imported at the first method applied (seconds of import `tuneforge validate` does not need)."""
    with bitsandbytes_hidden():
        import peft

    return peft
