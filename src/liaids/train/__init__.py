"""Training loops, one module per network; each writes a self-describing model folder."""
