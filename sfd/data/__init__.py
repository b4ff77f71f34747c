"""Image sources, latent shards and the datasets that read them."""
