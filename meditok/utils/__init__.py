"""Shared helpers below every other layer: lazy imports, atomic writes, the device /
precision / seed switch, typed configs, the pretrained save/load mixin and result files."""
