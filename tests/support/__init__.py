"""Helpers for the test suite: database backends, server processes, external tools."""
