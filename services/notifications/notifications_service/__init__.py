"""Keelson service package."""
