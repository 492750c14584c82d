"""Small shared helpers (lazy imports, atomic writes, device/precision switch)."""
