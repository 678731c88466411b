"""Typed shapes of the two protocols the proxy speaks (plain dicts on the wire)."""
