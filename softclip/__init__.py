"""softclip: train SoftCLIP image-text models, export them, search and label photo collections."""

from softclip.config import ModelConfig, list_presets, load_config

__version__ = "0.1.0"

__all__ = ["ModelConfig", "list_presets", "load_config"]
