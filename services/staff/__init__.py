"""The staff service."""
