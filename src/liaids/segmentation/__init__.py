"""Liver segmentation stage: preprocessing, the trained model, inference and post-processing."""
