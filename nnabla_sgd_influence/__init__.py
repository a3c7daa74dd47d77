"""Rank the training rows of a Neural Network Console model by their SGD-Influence."""

__version__ = "0.1.0"
