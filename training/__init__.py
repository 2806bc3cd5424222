"""Bouncer's ML code: dataset and labels, training, export, embedding, evaluation, registration."""

__version__ = "0.1.0"
