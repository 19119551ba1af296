"""The HTTP management API (ZeroTier controller compatible), health and status."""
