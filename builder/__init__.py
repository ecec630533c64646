"""isobuild: patch series in, boot-verified distribution ISOs out."""

__version__ = "0.1.0"
