"""A conversation with `memos chat`: time to first token at each turn, resuming from the
state kept after the previous exchanges against evaluating the whole conversation again.

A store of --units memories (pinned: the first 20, with a KV cache of them); --turns questions
about them asked in a row, with greedy decoding and answers of up to --max-tokens tokens, by
three sessions on the same model, in turns:

- ahead: as interactive `memos chat` runs: the head and the conversation's exchanges kept as
  a KV state, and the last exchange evaluated between turns (`ChatSession.ready`, on a thread
  while the user reads and types), so a turn evaluates only its memories and question;
- kept: as `memos serve` runs a conversation a client sends: the kept state extended by the
  last exchange at the start of the turn;
- whole: only the head's state kept, so each turn evaluates every exchange again after the
  head, as chat did before.

The prompts are the same token for token, and so must the answers be; the benchmark says so.

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
            sessions = {name: ChatSession(store, generator, ChatOptions(**options))
                        for name in ("ahead", "kept", "whole")}
            sessions["whole"].options.keep_head = False  # its head's state is kept (above); the conversation's not
            head = sessions["ahead"].head
            print(f"   head: {len(head.tokens)} tokens ({head.source}); {args.turns} questions, "
                  f"answers of up to {args.max_tokens} tokens; each cell: tokens evaluated, first token", flush=True)
            print("turn  prompt  |  ahead              |  kept               |  whole", flush=True)
            same = True
            firsts: dict[str, list[float]] = {name: [] for name in sessions}
            for n, question in enumerate(queries(args.turns, seed=13), 1):
                sessions["ahead"].ready()  # in `memos chat`, while the user types
                cells = []
                for name, session in sessions.items():
                    "".join(session.ask(question))
                    turn = session.last
                    assert turn is not None
                    firsts[name].append(turn.timings["first_token_s"])
                    cells.append(f"{turn.prompt_tokens - turn.cached_tokens:5d} {turn.timings['first_token_s']:8.3f}s")
                a = sessions["ahead"].last
                same &= all(s.last.answer == a.answer and s.last.prompt_tokens == a.prompt_tokens
                            for s in sessions.values())
                print(f"{n:4d}  {a.prompt_tokens:6d}  |  " + "     |  ".join(cells), flush=True)
                for session in sessions.values():
                    session.history[:] = sessions["ahead"].history  # the same conversation, whatever each answered
        later = {name: median(values[1:]) for name, values in firsts.items()}
        print(f"first token from turn 2 on, median: ahead {later['ahead']:.3f}s, kept {later['kept']:.3f}s, whole "
              f"{later['whole']:.3f}s (ratios to whole {later['ahead'] / later['whole']:.2f} and "
              f"{later['kept'] / later['whole']:.2f}); answers and prompts {'the same' if same else 'DIFFERENT'} "
              f"all three ways", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
