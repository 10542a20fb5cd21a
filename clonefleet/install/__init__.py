"""Encrypted install from any provider's rescue system (same code path for every provider)."""
