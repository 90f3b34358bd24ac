"""Domain rules: request validation, kind rules, update masks (no SQL here)."""
