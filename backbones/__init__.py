"""Models: blocks, token mixers, hierarchical and isotropic bodies."""
