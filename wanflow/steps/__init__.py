"""The real steps of a Wan run: encode text, encode conditioning, denoise, decode, save.

Importing this package is cheap: torch and the models are imported inside each step's ``run``.
"""
