"""smoltune: fine-tune small language models with LoRA, orchestrated by Prefect.

smoltune run --config configs/default.yaml
"""

__version__ = "0.1.0"
