"""Serving: the FastAPI app factory (/health, /generate, /qa) and its command line, torch-free on the request path."""
