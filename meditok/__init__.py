"""meditok: a unified tokenizer for medical images (MedITok), pure PyTorch and CPU-first."""
from meditok.config import MedITokConfig, ModelConfig, PreprocessConfig, preset
from meditok.errors import CheckpointError, ImageReadError, InvalidInputError, MedITokError
from meditok.model import MedITok, MedITokOutput

__version__ = "0.1.0"
__all__ = [
    "MedITok", "MedITokOutput", "MedITokConfig", "ModelConfig", "PreprocessConfig", "preset",
    "MedITokError", "ImageReadError", "InvalidInputError", "CheckpointError", "__version__",
]
