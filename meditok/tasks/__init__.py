"""Jobs built on the model and data layers: batch tokenize/reconstruct, the bundled demo."""
