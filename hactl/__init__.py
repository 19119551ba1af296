"""hactl: a free, self-hosted, highly available network controller."""

__version__ = "0.1.0"
