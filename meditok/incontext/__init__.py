"""The in-context medical vision generalist (MVG): one model, prompted with an (image, label image)
pair, produces the label image of a query — segmentation, denoising and inpainting as prompted
image-to-image, in pixel space (:class:`MVG`) and in MedITok token space (:class:`TokenMVG`).

* :mod:`.colour` — binary / pre-defined / random in-context colouring (MVG §3.2)
* :mod:`.sources`, :mod:`.degrade`, :mod:`.episodes` — the real data as tasks, 2x2 canvases
* :mod:`.model` — the pixel ViT with MIM and AR objectives (§3.3); :mod:`.tokens` — the token GPT
* :mod:`.baselines` — U-Net specialist, copy-the-prompt-label
* :mod:`.train`, :mod:`.infer`, :mod:`.evaluate`, :mod:`.bench`, :mod:`.run` — training, prompts and
  tiling, protocols and tables, the ``run`` verb
"""
from meditok.incontext.model import MVG, MVGConfig, mvg_preset

__all__ = ["MVG", "MVGConfig", "mvg_preset"]
