"""Typed Python client for tether.v1.SessionService."""
