"""Offline quality: risk on outcomes (``risk``, ``satmon evaluate``) and hot spots against the
simulator's incidents (``hotspots``).
"""
