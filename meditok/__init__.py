"""meditok: a unified tokenizer for medical images (MedITok), pure PyTorch and CPU-first."""
from meditok.data.preprocess import PreprocessConfig
from meditok.errors import CheckpointError, ImageReadError, InvalidInputError, MedITokError
from meditok.tokenizer import MedITok, MedITokConfig, MedITokOutput, ModelConfig, preset

__version__ = "0.1.0"
__all__ = [
    "MedITok", "MedITokOutput", "MedITokConfig", "ModelConfig", "PreprocessConfig", "preset",
    "MedITokError", "ImageReadError", "InvalidInputError", "CheckpointError", "__version__",
]
