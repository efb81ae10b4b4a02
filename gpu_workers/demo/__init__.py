"""The tiny Llama model that ships with Context Lab, and the seeded script that rebuilt it."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
