"""Lesion detection: preprocessing to the detection grid, 2D-to-3D merging, volume inference."""
