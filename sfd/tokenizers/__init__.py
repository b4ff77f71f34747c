"""Tokenizers of the composite latent: the texture VAE, DINOv2 features and the Semantic VAE."""
