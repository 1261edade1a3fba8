"""Shared pieces of the benchmarks: synthetic memories, timing, sizes."""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tomas", "Uma", "Vera", "Wen", "Yusuf"]
VERBS = ["moved to", "visited", "wrote about", "cooked dinner in", "started a course on", "complained about",
         "took photos of", "bought a ticket to", "dreamed about", "painted", "adopted a cat in", "ran a race in"]
THINGS = ["Lisbon", "the old library", "quantum computing", "a pottery class", "the mountains near Oslo",
          "her grandmother's recipes", "the jazz festival", "a used bicycle", "the community garden",
          "Kyoto", "a sci-fi novel", "the harbour at dawn", "vegan baking", "the chess club", "a camping trip",
          "the new office", "Marrakesh", "an electric guitar", "the museum of modern art", "a volunteer shift"]
TAILS = ["last weekend", "after work", "with a friend", "for the first time", "again", "in the rain",
         "on a Tuesday", "because it was cheap", "to relax", "despite the crowds", "and loved it", "early in the morning"]


def sentences(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct, plausible one-line memories."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(THINGS)} {rng.choice(TAILS)} (note {i}).")
    return out


def queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [f"when did {rng.choice(NAMES)} go to {rng.choice(THINGS)}?" for _ in range(n)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wall(cmd: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
