"""softclip: train SoftCLIP image-text models, export them, search and label photo collections."""

from softclip.config import ModelConfig, list_presets, load_config
from softclip.encoder import Encoder, TorchEncoder, open_encoder
from softclip.loss import LossConfig, SoftCLIPLoss, softclip_loss
from softclip.model import SoftCLIP, create_model
from softclip.pretrained import from_pretrained
from softclip.save import push_to_hub, save_pretrained
from softclip.tokenizer import Tokenizer, tokenize
from softclip.transform import PreprocessConfig, load_image
from softclip.zeroshot import label

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "LossConfig",
    "ModelConfig",
    "PreprocessConfig",
    "SoftCLIP",
    "SoftCLIPLoss",
    "Tokenizer",
    "TorchEncoder",
    "create_model",
    "from_pretrained",
    "label",
    "list_presets",
    "load_config",
    "load_image",
    "open_encoder",
    "push_to_hub",
    "save_pretrained",
    "softclip_loss",
    "tokenize",
]
