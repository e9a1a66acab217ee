"""The toy models: a procedural world, an exact judge, and two tiny pipelines trained on it (`--model toy`, `toy-z`)."""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"  # the SD3 (MMDiT) toy, a shipped diffusers folder (fp16 safetensors)
MODEL_Z_DIR = Path(__file__).parent / "model_z"  # the Z-Image (single-stream) toy, same world and VAE
TOYS = {"toy": MODEL_DIR, "toy-z": MODEL_Z_DIR}  # the --model aliases the toy judge reads
