"""A pure-PyTorch image-classifier trainer."""
