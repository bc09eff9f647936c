"""Reliability and security measurements: fault injection, load, hostile input (see docs/RELIABILITY.md)."""
