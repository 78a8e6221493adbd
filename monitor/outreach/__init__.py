"""What care and retention teams see: the view of every score (``view``), the outreach store and policy
(``store``), privacy and audit (``privacy``), the API (``api``) and the page (``web/``).
"""
