"""What a training step sees: the long-tailed datasets (lt_data), their transforms, the seeded loaders that feed
global batches (loading) and the synthetic top-up sets written by `synthesize` (synthetic_set)."""
