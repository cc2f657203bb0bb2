"""conceptvae: edit face photos with concept vectors in the latent space of a convolutional VAE."""

from conceptvae.data import CELEBA_ATTRIBUTES, LabelledImages
from conceptvae.errors import ConceptVAEError, DataError, OutputError

__version__ = "0.1.0"

__all__ = [
    "CELEBA_ATTRIBUTES",
    "ConceptVAEError",
    "DataError",
    "LabelledImages",
    "OutputError",
    "__version__",
]
