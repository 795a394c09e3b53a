"""From a Stage 1 dataset to batches: samples, pairing, the elastic sample order, the checkpointed loader."""
