"""A conversation with `memos chat`: time to first token at each turn, resuming from the
state kept after the previous exchanges against evaluating the whole conversation again.

A store of --units memories (pinned: the first 20, with a KV cache of them); one session in
one process asks --turns questions about them in a row, with greedy decoding and answers of
up to --max-tokens tokens. Each question is asked twice, in turns, by two sessions on the
same model: one as `memos chat` runs (the head and the conversation's exchanges kept as a
KV state, extended by the last exchange), and one that keeps only its head's state, so each
turn evaluates every exchange again after the head, as chat did before. The two
prompts are the same token for token, and so must the answers be; the benchmark says so.

Usage: python benchmarks/bench_conversation.py [--turns 12] [--units 200] [--max-tokens 96] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import median, queries, sentences

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_store(root: Path, n: int) -> None:
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    for i, text in enumerate(sentences(n, seed=3)):
        store.add(text, kind="fact", pinned=i < 20)
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(root), "kv", "build", "--pinned"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--keep", type=Path, help="build the store here and keep it (reused when it exists)")
    args = ap.parse_args()
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-conversation-"))
    root = args.keep or tmp / "store"
    try:
        if not root.exists():
            build_store(root, args.units)
        store = MemoryStore(root)
        options = {"temperature": 0.0, "max_tokens": args.max_tokens, "save": False, "keep_head": True}
        with load_generator(None) as generator:
            kept = ChatSession(store, generator, ChatOptions(**options))
            whole = ChatSession(store, generator, ChatOptions(**options))
            whole.options.keep_head = False  # its head's state is kept (above); the conversation's is not
            print(f"   head: {len(kept.head.tokens)} tokens ({kept.head.source}); {args.turns} questions, "
                  f"answers of up to {args.max_tokens} tokens", flush=True)
            print("turn  prompt  kept-state: evaluated  first token  |  whole conversation: evaluated  first token",
                  flush=True)
            same = True
            ratios = []
            for n, question in enumerate(queries(args.turns, seed=13), 1):
                for session in (kept, whole):
                    "".join(session.ask(question))
                a, b = kept.last, whole.last
                assert a is not None and b is not None
                same &= a.answer == b.answer and a.prompt_tokens == b.prompt_tokens
                first_a, first_b = a.timings["first_token_s"], b.timings["first_token_s"]
                if n > 1:
                    ratios.append(first_a / first_b)
                print(f"{n:4d}  {a.prompt_tokens:6d}  {a.prompt_tokens - a.cached_tokens:20d}  {first_a:10.3f}s  |  "
                      f"{b.prompt_tokens - b.cached_tokens:28d}  {first_b:10.3f}s", flush=True)
                whole.history[:] = kept.history  # the same conversation, whatever each answered
        print(f"first token from turn 2 on, kept state / whole conversation: median ratio {median(ratios):.2f}; "
              f"answers and prompts {'the same' if same else 'DIFFERENT'} both ways", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
