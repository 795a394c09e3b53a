"""What the model is and costs: flavors (shapes), training FLOPs per sample, the FP8 converter."""
