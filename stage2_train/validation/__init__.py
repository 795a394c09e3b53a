"""Validation loss on a held-out dataset and sample images from stored prompt encodings."""
