"""Literals for the search table's filters (Lance's SQL), without importing Lance."""

from __future__ import annotations

from datetime import datetime


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_time(dt: datetime) -> str:
    return f"timestamp '{dt.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
