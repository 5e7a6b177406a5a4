"""Error families. The CLI catches ProbdaError only and prints its message as one line.

Messages follow `where: what is wrong; what to do`.
"""


class ProbdaError(Exception):
    """Base class of every error probda reports to users."""


class ImageReadError(ProbdaError):
    """An image or label file cannot be read or is not a valid image."""


class LabelMatchError(ProbdaError):
    """Images and labels do not pair up."""


class CheckpointError(ProbdaError):
    """A checkpoint is missing, malformed, unsafe or incompatible."""


class ConfigError(ProbdaError):
    """Invalid configuration or option values."""


class ExportError(ProbdaError):
    """A model cannot be exported."""


class RuntimeModelError(ProbdaError):
    """An exported model folder is invalid, tampered with or incompatible."""


class ZooValidationError(ProbdaError):
    """A bioimage.io package failed validation."""


class TrainingStopped(ProbdaError):
    """A run stopped itself because its label-free health check failed (e.g. collapse)."""
