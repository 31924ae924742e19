"""nitro: Stable Diffusion 1.x (Nitro-Diffusion first), tuned by measured tiers."""

__version__ = "0.1.0"
