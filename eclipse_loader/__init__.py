"""eclipse-loader: train on possibly-poisoned image data without changing the training code."""
__version__ = "0.1.0"
