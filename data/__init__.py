"""The bundled default model and adapters (made by make_default.py)."""
