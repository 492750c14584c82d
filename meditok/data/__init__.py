"""Medical image input: readers, preprocessing, volume slicing, QC, manifests, datasets.

Submodules are imported on use (``from meditok.data.readers import read_image``) so that
importing :mod:`meditok.data` stays cheap.
"""
from meditok.data.preprocess import load_image, load_images, to_model_input
from meditok.data.readers import MedicalImage, Volume, iter_image_files, read_image, read_volume

__all__ = ["MedicalImage", "Volume", "read_image", "read_volume", "iter_image_files",
           "to_model_input", "load_image", "load_images"]
