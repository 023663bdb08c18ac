"""OAuth2 credentials that keep themselves alive."""
