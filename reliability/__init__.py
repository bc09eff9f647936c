"""Reliability and security measurements: fault injection, load, hostile input.

See docs/RELIABILITY.md and the documents in docs/reliability/.
"""
