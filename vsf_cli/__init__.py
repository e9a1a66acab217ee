"""vsf: negative prompts that work on few-step image and video models (Value Sign Flip)."""

__version__ = "0.1.0"
