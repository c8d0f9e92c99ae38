"""`tuneforge plan`: trainable parameters and training memory per fine-tuning method, from a model
config alone (meta device, no weights), against a memory budget.

    tuneforge plan --model smollm2-135m --batch-size 8 --seq-len 256
"""

from tuneforge.plan.archs import build_meta_model, known_models, load_arch_config
from tuneforge.plan.estimate import METHODS, estimate
from tuneforge.plan.run import run_plan

__all__ = ["METHODS", "build_meta_model", "estimate", "known_models", "load_arch_config", "run_plan"]
