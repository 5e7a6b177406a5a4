"""probda: probabilistic domain adaptation for biomedical image segmentation."""

__version__ = "0.1.0"
