"""Portable memory: export, import (memos's own formats and other tools'), sync between machines."""
