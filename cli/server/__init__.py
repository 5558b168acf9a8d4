"""`hotlora serve`: an HTTP server with llama-server's and OpenAI's endpoints, each request choosing its adapters.

Layout: `errors` (the JSON error shape), `schemas` (request validation), `registry` (loaded adapters and
runtime loading confined to --lora-dir), `engine` (the generation worker), `responses` (OpenAI and llama-server
response shapes), `routes` (the ASGI app).
"""
