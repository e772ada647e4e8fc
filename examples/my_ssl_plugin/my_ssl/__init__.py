"""An example self-supervised model package that registers a midprobe backbone."""

__version__ = "0.1.0"
