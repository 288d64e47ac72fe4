"""Keelson core library."""
