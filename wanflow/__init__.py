"""wanflow: a declarative, content-addressed job runner for the Wan video-diffusion models."""

__version__ = "0.1.0"

#: The newest recipe schema this wanflow understands; a recipe asking for more is refused.
SCHEMA_VERSION = 1
