"""Tests that talk to a real Tether server over a real channel, on SQLite and PostgreSQL."""
