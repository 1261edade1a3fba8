"""Memory for agents at 100k units: `memos recall` with and without `memos serve`, MCP, many clients, chat.

1. `memos recall --json` from a shell, with the store's server running and
   without (`--no-server`), interleaved (target: at most 0.15 s, ratio at
   most 0.2); the same with the table output;
2. recall through MCP: the SDK's client on `memos mcp` (stdio), warm: p50 and
   p95 over --mcp-n calls (targets 30 ms and 60 ms);
3. 8 clients at once sending 1,000 requests (70% recall, 25% add, 5% forget)
   to the server: errors, every acknowledged add present afterwards,
   `memos check`;
4. add throughput for --seconds: 8 clients adding through the server against
   8 processes running `memos --no-server add` in a loop (target: 5 times);
5. the first token of `memos chat QUESTION` through the server, with a
   current KV cache of the cube's pinned memory (target: 0.3 s), with chat's
   defaults, with no relevance floor, and with fewer memories (k 1 to 4).

The store is built like bench_portable's: a pack of --n units with random
unit vectors, imported (embedding 100k texts is not what is measured; every
query and every add here is embedded for real).

Usage: python benchmarks/bench_serve.py [--n 100000] [--seconds 30] [--mcp-n 200] [--parts 12345] [--store DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_portable import source_pack
from common import median, pct, queries

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEMOS = [sys.executable, "-m", "memos_cli"]
MEMOS_BIN = str(Path(sys.executable).with_name("memos"))  # the installed entry point, as a user runs it


def memos(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(MEMOS + ["--store", str(store), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"memos {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def start_server(store: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(MEMOS + ["--store", str(store), "serve", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        raise SystemExit(f"memos serve did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=120)


def part1(store: Path, rounds: int) -> None:
    qs = queries(rounds * 2)
    with_s, without_s, table_s = [], [], []
    server = start_server(store)
    try:
        wall([MEMOS_BIN, "--store", str(store), "recall", "warm up", "--json"])
        for i in range(rounds):
            with_s.append(wall([MEMOS_BIN, "--store", str(store), "recall", qs[i], "--json"]))
            table_s.append(wall([MEMOS_BIN, "--store", str(store), "recall", qs[i]]))
            without_s.append(wall([MEMOS_BIN, "--store", str(store), "--no-server", "recall", qs[i], "--json"]))
    finally:
        stop_server(server)
    w, wo = median(with_s), median(without_s)
    print(f"1. memos recall --json, median of {rounds}: with the server {w:.3f}s, without {wo:.3f}s "
          f"(ratio {w / wo:.2f}); with the server and the table output {median(table_s):.3f}s", flush=True)


def part2(store: Path, n: int) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    async def run() -> list[float]:
        params = StdioServerParameters(command=sys.executable, args=["-m", "memos_cli", "--store", str(store), "mcp",
                                                                    "--no-chat"], env={**os.environ})
        lat = []
        async with Client(params, read_timeout_seconds=120) as client:
            await client.call_tool("recall", {"query": "warm up"})
            for q in queries(n, seed=5):
                start = time.perf_counter()
                result = await client.call_tool("recall", {"query": q, "k": 10})
                lat.append((time.perf_counter() - start) * 1000)
                assert not result.is_error
        return lat

    lat = asyncio.run(run())
    print(f"2. recall through MCP (the SDK's client, memos mcp on stdio, warm, k=10): p50 {pct(lat, 0.5):.1f} ms, "
          f"p95 {pct(lat, 0.95):.1f} ms over {n} calls", flush=True)


def part3(store: Path, total: int) -> None:
    from memos_cli.agents.client import find

    server_proc = start_server(store)
    try:
        server = find(store)
        assert server is not None
        ids = [u["id"] for u in server.request("GET", "/v1/units?limit=2000")]
        rng = random.Random(9)
        plan = [rng.choices(["recall", "add", "forget"], weights=[70, 25, 5])[0] for _ in range(total)]
        errors: list[str] = []
        added: list[str] = []
        lock = threading.Lock()
        qs = queries(total, seed=3)

        def client(k: int) -> None:
            for i in range(k, total, 8):
                try:
                    if plan[i] == "recall":
                        server.request("POST", "/v1/recall", {"query": qs[i], "k": 10})
                    elif plan[i] == "add":
                        unit = server.request("POST", "/v1/remember", {"text": f"client {k} noted thing {i}"})
                        with lock:
                            added.append(unit["id"])
                    else:
                        with lock:
                            uid = ids.pop()
                        server.request("POST", "/v1/forget", {"ids": [uid]})
                except Exception as exc:  # noqa: BLE001 - counted
                    with lock:
                        errors.append(f"{plan[i]}: {exc}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        present = sum(1 for uid in added if server.request("GET", f"/v1/units/{uid}")["id"] == uid)
    finally:
        stop_server(server_proc)
    check = memos(store, "check", check=False).returncode
    print(f"3. 8 clients, {total} requests ({plan.count('recall')} recall, {plan.count('add')} add, "
          f"{plan.count('forget')} forget) in {seconds:.1f}s ({total / seconds:.0f}/s): {len(errors)} errors, "
          f"{present} of {len(added)} acknowledged adds present afterwards, memos check exit {check}", flush=True)
    for e in errors[:5]:
        print(f"   error: {e}")


def part4(store: Path, seconds: float) -> None:
    from memos_cli.agents.client import find

    def loop_process(k: int, stop: float, counts: list[int]) -> None:
        while time.perf_counter() < stop:
            done = subprocess.run([MEMOS_BIN, "--store", str(store), "--no-server", "add", f"process {k} add"],
                                  capture_output=True)
            if done.returncode == 0:
                counts[k] += 1

    counts = [0] * 8
    stop = time.perf_counter() + seconds
    threads = [threading.Thread(target=loop_process, args=(k, stop, counts)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    processes = sum(counts)

    server_proc = start_server(store)
    try:
        server = find(store)
        assert server is not None
        served = [0] * 8

        def loop_server(k: int, stop: float) -> None:
            while time.perf_counter() < stop:
                server.request("POST", "/v1/remember", {"text": f"client {k} add"})
                served[k] += 1

        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=loop_server, args=(k, stop)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_server(server_proc)
    print(f"4. adds in {seconds:.0f}s, 8 at a time: through the server {sum(served)} ({sum(served) / seconds:.1f}/s), "
          f"8 processes of `memos add` {processes} ({processes / seconds:.1f}/s): {sum(served) / max(processes, 1):.1f}x",
          flush=True)


def part5(store: Path, rounds: int) -> None:
    from memos_cli.agents.client import find

    ids = [u["id"] for u in json.loads(memos(store, "list", "--json", "-n", "12").stdout)]
    memos(store, "pin", *ids)
    memos(store, "kv", "build", "--pinned")
    server_proc = start_server(store)
    try:
        server = find(store)
        assert server is not None
        # Chat's relevance floor keeps out of the prompt what recall finds but is not about the question (in
        # a store of random vectors, everything): "full" turns it off, to measure a prompt with all it recalls.
        sweep = {f"k{k}": {"k": k, "budget": 64 * k} for k in (1, 2, 3)}  # chat's defaults otherwise
        firsts: dict[str, list[float]] = {"default": [], "full": [], "small": [], **{label: [] for label in sweep}}
        used: list[int] = []  # memories in the prompt with the defaults
        asked = queries(rounds + 1, seed=5)  # about the people and things of common.sentences
        for i in range(rounds + 1):
            for label, extra in (("default", {}), ("full", {"min_relevance": 0}),
                                 ("small", {"k": 4, "budget": 256, "min_relevance": 0}), *sweep.items()):
                start = time.perf_counter()
                first = None
                for line in server.stream("/v1/ask", {"question": asked[i], "stream": True,
                                                      "max_tokens": 16, "save": False, **extra}):
                    if "piece" in line and first is None:
                        first = time.perf_counter() - start
                    if "done" in line and label == "default" and i:
                        used.append(len(line["done"].get("memories") or []))
                if i:  # the first loads the model, if the server had not yet
                    firsts[label].append(first or 0.0)
        shell = []
        for i in range(rounds):
            proc = subprocess.Popen([MEMOS_BIN, "--store", str(store), "chat", asked[i], "--max-tokens", "16",
                                     "--no-save"], stdout=subprocess.PIPE)
            start = time.perf_counter()
            assert proc.stdout is not None
            proc.stdout.read(1)
            shell.append(time.perf_counter() - start)
            proc.wait()
    finally:
        stop_server(server_proc)
    print(f"5. first token through the server, warm, KV cache of {len(ids)} pinned units, median of {rounds} questions "
          f"(a request on the socket): {median(firsts['default']):.3f}s with chat's defaults (relevance floor 0.5: "
          f"{median(used):.0f} memories recalled), {median(firsts['full']):.3f}s with no floor (k 8, 1,024 tokens of "
          f"recalled memory), "
          f"{median(firsts['small']):.3f}s with no floor, k 4 and 256 tokens; "
          + ", ".join(f"{median(firsts[label]):.3f}s with k {extra['k']} and {extra['budget']} tokens"
                      for label, extra in sweep.items())
          + f"; `memos chat QUESTION` from a shell (defaults), first byte of the answer: median {median(shell):.3f}s",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--mcp-n", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--parts", default="12345", help="Which parts to run (digits).")
    ap.add_argument("--store", help="run on this store instead (say bench_recall.py's --keep, whose vectors are "
                                    "real); parts 3-5 write to it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-serve-"))
    try:
        if args.store:
            store = Path(args.store)
            print(f"   (the store {store})", flush=True)
        else:
            pack = tmp / "source.pack"
            source_pack(pack, args.n)
            store = tmp / "store"
            memos(store, "import", str(pack))
            pack.unlink()
            print(f"   (a store of {args.n:,} units, from a pack of random vectors)", flush=True)
        parts = {"1": lambda: part1(store, args.rounds), "2": lambda: part2(store, args.mcp_n),
                 "3": lambda: part3(store, args.requests), "4": lambda: part4(store, args.seconds),
                 "5": lambda: part5(store, args.rounds)}
        for key in args.parts:
            parts[key]()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
