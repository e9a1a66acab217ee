"""The toy model: a procedural world, an exact judge, and a tiny SD3 pipeline trained on it (`--model toy`)."""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"  # the shipped diffusers folder (fp16 safetensors)
