"""tuneforge: fine-tune LLMs with every method from one config, correct by construction and measured."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes 0.50 on AVX512-BF16 CPUs tries to fetch a kernel from a model hub through the `kernels`
# package and warns when it cannot; it falls back to its own CPU path, so the warning is noise offline.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
