"""Security tests (issue 3): authorization, tokens, payload isolation, limits, TLS, bad input."""
