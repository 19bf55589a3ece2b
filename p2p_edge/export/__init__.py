"""torch -> ONNX export scripts (need the `export` extra; never imported by the client)."""
