"""The command-line interface: parses, calls ``memos_cli.core``, renders."""

from .app import app, main

__all__ = ["app", "main"]
