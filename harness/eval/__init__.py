"""Evaluation: validation bits per byte (bpb.py) and the CORE benchmark (core.py)."""
