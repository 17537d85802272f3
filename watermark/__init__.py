"""ringmark: Tree-Ring-style watermarks in the initial noise of latent diffusion models."""

__version__ = "0.1.0"
