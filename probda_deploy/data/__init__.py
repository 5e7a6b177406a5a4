"""Image I/O, validation, label matching, normalisation, patch sampling, augmentation, synthetic data."""
