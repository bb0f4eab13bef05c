"""bayes-merger: Bayesian optimisation of block-weighted Stable Diffusion checkpoint merges."""

__version__ = "0.1.0"
