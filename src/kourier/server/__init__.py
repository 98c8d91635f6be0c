"""The service wing: consume requests, run the ASGI app, publish replies."""
