"""`tuneforge plan`: trainable parameters and training memory per fine-tuning method, from a model config
alone (meta device, no weights), against a memory budget. It takes the config's own keys.

    tuneforge plan model=smollm2-135m-instruct training.batch_size=8 training.max_length=256
    tuneforge plan examples/quickstart.yaml method.name=all
"""

from tuneforge.plan.archs import build_meta_model, known_models, load_arch_config
from tuneforge.plan.estimate import estimate
from tuneforge.plan.run import run_plan

__all__ = ["build_meta_model", "estimate", "known_models", "load_arch_config", "run_plan"]
