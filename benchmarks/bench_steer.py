"""Steering vectors: does a sentiment score move monotonically with strength, and does the
calibrated default keep every probe's answer sound?

`memos steer cheerful --pos POS --neg NEG --json` builds a vector from 12 cheerful and 12 gloomy
sentences (the CLI path: build, calibrate on its six built-in probes, save one commit) in a
throwaway store; the blob is read back from the store. Then, on a held-out probe set of 8 neutral
questions the calibration never saw, at strengths -1, -0.5, 0, calibrated/2 and calibrated:

- score: the first answer token's log-odds of positive against negative words (``steer.score``),
  mean over the probes; it should rise with strength;
- tone: positive minus negative words in the greedy answers (``steer.tone``), summed;
- sound: how many greedy answers pass ``steer.problem`` (not empty, blank, scattered or a loop).

And the time to switch vectors: ``Generator.set_steering`` (which also clears the chat context)
and llama.cpp's ``llama_set_adapter_cvec`` alone, median of 200.

Usage: python benchmarks/bench_steer.py [--max-tokens 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POS = [
    "I love this, it is wonderful and makes me so happy.",
    "What a beautiful day, everything is going great!",
    "Thank you so much, this is fantastic news.",
    "I feel joyful and grateful today.",
    "The food was delicious and the staff were lovely.",
    "This is the best trip I have ever had.",
    "I am excited and full of hope.",
    "Such a delightful, cheerful afternoon.",
    "My friends surprised me and I could not stop smiling.",
    "The concert was brilliant, I enjoyed every minute.",
    "We won the match and everyone was celebrating.",
    "The garden looks gorgeous in the spring sunshine.",
]
NEG = [
    "I hate this, it is awful and makes me so sad.",
    "What a miserable day, everything is going wrong!",
    "This is terrible news, I am so upset.",
    "I feel angry and bitter today.",
    "The food was disgusting and the staff were rude.",
    "This is the worst trip I have ever had.",
    "I am anxious and full of dread.",
    "Such a gloomy, depressing afternoon.",
    "My friends forgot about me and I felt lonely.",
    "The concert was dreadful, I regretted every minute.",
    "We lost the match and everyone was furious.",
    "The garden looks dead and grey in the cold rain.",
]
# Held out: not the calibration's probes, and about nothing cheerful or gloomy.
PROBES = [
    "How was your trip to the market?",
    "What do you think of the new office?",
    "Tell me about your neighbours.",
    "How is the weather where you live?",
    "What did you have for lunch?",
    "How was the meeting this morning?",
    "What is the capital of Spain?",
    "How many legs does a spider have?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=24, help="of each probe's greedy answer")
    ap.add_argument("--keep", type=Path, help="build the store here and keep it")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="memos-steer-")) / "store"
    os.environ.setdefault("MEMOS_USER", "bench")
    root.parent.mkdir(parents=True, exist_ok=True)
    pos, neg = root.parent / "pos.txt", root.parent / "neg.txt"
    pos.write_text("\n".join(POS) + "\n", encoding="utf-8")
    neg.write_text("\n".join(NEG) + "\n", encoding="utf-8")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(root), "steer", "cheerful", "--pos", str(pos),
                           "--neg", str(neg), "--replace", "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"memos steer failed: {done.stderr.strip()}")
    saved = json.loads(done.stdout)
    secs = saved["seconds"]
    print(f"memos steer: {len(POS)} positive and {len(NEG)} negative texts, layers {saved['hparams']['layers']}, "
          f"wall {wall:.1f}s (model {secs['load_s']:.1f}s, build {secs['build_s']:.1f}s, "
          f"calibrate {secs['calibrate_s']:.1f}s)")
    print("calibration ladder (built-in probes):")
    for row in saved["report"]["calibration"]:
        why = "; ".join(f"{f['probe']!r}: {f['why']} ({f['answer'][:40]!r})" for f in row["failed"])
        print(f"  {row['strength']:>6g}  {'ok' if row['ok'] else 'FAILS: ' + why}")
    calibrated = float(saved["scale"])
    print(f"calibrated strength: {calibrated:g}; direction norm {saved['report']['norm']:.1f}")

    from memos_cli.models.adapters import set_control
    from memos_cli.models.generator import load_generator
    from memos_cli.parametric import steer
    from memos_cli.parametric.learn import Teacher
    from memos_cli.store import params
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(root)
    tensors, _ = params.decode_blob(params.read_blob(store, params.get(store, "cheerful")))
    direction = tensors["direction"]
    strengths = sorted({-1.0, -0.5, 0.0, calibrated / 2, calibrated})
    with load_generator(None, n_ctx=2048) as generator:
        scores = steer.score(generator, direction, strengths, PROBES)
        teacher = Teacher(generator)
        prompts = [teacher.question(q) for q in PROBES]
        rows = []
        for strength, value in zip(strengths, scores, strict=True):
            with steer.steering(generator, direction, strength):
                answers = [steer.answer(generator, p, args.max_tokens) for p in prompts]
            bad = [(q, a, why) for q, a in zip(PROBES, answers, strict=True) if (why := steer.problem(a))]
            rows.append((strength, value, sum(steer.tone(a) for a in answers), len(PROBES) - len(bad), bad, answers))
        applied, raw = [], []
        vectors = [direction * 0.0, direction * calibrated]
        for i in range(200):
            t = time.perf_counter()
            generator.set_steering(vectors[i % 2], "bench")
            applied.append(time.perf_counter() - t)
        generator.set_steering(None)
        capture = generator.capture({}, n_ctx=256)  # llama.cpp's call alone, on a second context
        for i in range(200):
            t = time.perf_counter()
            set_control(generator.lib, capture.ctx, vectors[i % 2], generator.n_embd)
            raw.append(time.perf_counter() - t)
        capture.close()

    print(f"\nheld-out probes ({len(PROBES)}), greedy answers of {args.max_tokens} tokens")
    print(f"{'strength':>9} {'score':>8} {'tone':>5} {'sound':>6}")
    for strength, value, tone, sound, _, _ in rows:
        print(f"{strength:>9g} {value:>8.2f} {tone:>5d} {sound:>4d}/{len(PROBES)}")
    monotonic = all(a[1] < b[1] for a, b in zip(rows, rows[1:], strict=False))
    at_calibrated = next(r for r in rows if r[0] == calibrated)
    print(f"\nscore rises monotonically with strength: {'yes' if monotonic else 'NO'}")
    print(f"calibrated default ({calibrated:g}) keeps every held-out answer sound: "
          f"{'yes' if not at_calibrated[4] else 'NO: ' + '; '.join(f'{q!r}: {why}' for q, _, why in at_calibrated[4])}")
    print(f"switching between strength 0 and the calibrated vector, median of 200 (max): Generator.set_steering "
          f"(the vector, and clearing the chat context) {median(applied) * 1e6:.0f} us ({max(applied) * 1e6:.0f}); "
          f"llama_set_adapter_cvec alone {median(raw) * 1e6:.0f} us ({max(raw) * 1e6:.0f})")
    print("\nanswers at 0 and at the calibrated strength:")
    base = next(r for r in rows if r[0] == 0.0)
    for q, a0, a1 in zip(PROBES, base[5], at_calibrated[5], strict=True):
        print(f"  {q}\n     0: {' '.join(a0.split())[:90]}\n  {calibrated:>4g}: {' '.join(a1.split())[:90]}")
    if not args.keep:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
