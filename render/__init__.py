"""Offline rendering: driving sources in, animated frames out, written as videos, pictures or templates."""
