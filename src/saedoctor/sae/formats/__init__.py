"""One module per SAE file format: `detect(path) -> bool` and `load(path) -> RawSAE`; formats
holding one dictionary per layer (circuit-tracer sets) add `load_set(path, layer) -> [RawSAE]`."""
