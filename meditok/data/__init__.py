"""Medical image input shared by every family: readers, the intensity contract, volumes,
QC, transforms, manifests, shards, the corpus, benchmark datasets and token files.

Submodules are imported on use (``from meditok.data.readers import read_image``) so that
importing :mod:`meditok.data` stays cheap.
"""
from meditok.data.preprocess import PreprocessConfig, load_image, load_images, to_input
from meditok.data.readers import MedicalImage, Volume, iter_image_files, read_image, read_volume

__all__ = ["MedicalImage", "Volume", "read_image", "read_volume", "iter_image_files",
           "PreprocessConfig", "to_input", "load_image", "load_images"]
