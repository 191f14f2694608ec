"""trainlab: a config-driven experiment CLI for studying training strategies."""

__version__ = "0.1.0"
