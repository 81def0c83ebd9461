"""MoRe (Monarch Rectangular) adapters as a PEFT method. `import more` registers it with PEFT."""
from .config import MORE_PEFT_TYPE, MoReConfig
from .layer import MoReLayer, MoReLinear
from .model import MoReModel
from .ops import monarch_dense, monarch_multiply, monarch_reference
from .projection import project_dense, project_lora
from .registration import register
from .shapes import MonarchShape, lora_params, monarch_shape

register()

__all__ = [
    "MORE_PEFT_TYPE",
    "MoReConfig",
    "MoReLayer",
    "MoReLinear",
    "MoReModel",
    "MonarchShape",
    "lora_params",
    "monarch_dense",
    "monarch_multiply",
    "monarch_reference",
    "monarch_shape",
    "project_dense",
    "project_lora",
    "register",
]
