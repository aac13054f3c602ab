"""One module per SAE file format: `detect(path) -> bool` and `load(path) -> RawSAE`."""
