"""Metrics and evaluation: segmentation (and, later, detection, classification, patients)."""
