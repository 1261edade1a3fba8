"""The command-line interface (Typer, rich): parses, calls the library below it, renders."""

from .app import app, main

__all__ = ["app", "main"]
