"""Pixel-space DDPM (Ho et al. 2020): the models ``sdstudio train ddpm`` writes, as a studio family.

No VAE (an identity latent format: the sampler works on the image in [-1, 1]), a diffusers
``UNet2DModel`` on the DDPM's own schedule, unconditional or class-conditional (``classes.json``:
caption -> class id; any other prompt, and the negative prompt, is the trained "null" class).
"""
