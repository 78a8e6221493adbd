"""The traffic simulator (``simulate``) and the worlds it draws (``world``): shares no code with the
scoring it grades.
"""
