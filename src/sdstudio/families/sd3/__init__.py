"""Stable Diffusion 3 / 3.5 (Esser et al. 2024, "Scaling Rectified Flow Transformers"): an MMDiT
(diffusers ``SD3Transformer2DModel``) on a 16-channel VAE latent, rectified-flow sampling with a
timestep shift, and three text encoders (CLIP-L, CLIP-G, optional T5-XXL) read from a diffusers folder.
"""
