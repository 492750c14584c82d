"""Medical VQA with MedITok as the vision tower of a small causal LM (LLaVA-style, paper §4.5).

``meditok vqa train | eval | ask``. Modules: :mod:`~meditok.vqa.config` (typed configs),
:mod:`~meditok.vqa.lm` (offline LMs from registry packages, GGUF → cached safetensors),
:mod:`~meditok.vqa.prompt` (``<image>`` placeholder and the embedding splice),
:mod:`~meditok.vqa.model` (tower, projector, :class:`~meditok.vqa.model.VQAModel`),
:mod:`~meditok.vqa.data` (caption / QA pairs, shared-prefix packing), :mod:`~meditok.vqa.train`
(stages A and B on the engine loop), :mod:`~meditok.vqa.bench` (VQA-RAD evaluation),
:mod:`~meditok.vqa.ask` (single and batch answering). The heavy dependencies (transformers,
peft, gguf, accelerate) are the ``vqa`` extra and are imported only when a model is built.
"""
