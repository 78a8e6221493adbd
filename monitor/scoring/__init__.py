"""The per-subscriber risk: feature state (``features``), the online model (``risk``), one input
partition's state and scoring (``core``) and warm starts (``warmstart``). Pure.
"""
