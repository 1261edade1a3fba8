"""``memos learn``: learn memories into a LoRA adapter (parametric memory)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from memos_cli.errors import UsageError

from .app import app
from .common import open_existing_store, print_json, progress_bar, say_notices
from .read import KindF, SinceF, TagF, UntilF, _filters


@app.command()
def learn(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The adapter's name.", show_default=False)],
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Units to learn, by id.",
                                                    show_default=False)] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", metavar="Q",
                                              help="Learn the best -k units recalled for Q.")] = None,
    k: Annotated[int, typer.Option("-k", metavar="N", help="How many units --query selects.", min=1, max=1000)] = 20,
    kind: KindF = None, tag: TagF = None, since: SinceF = None, until: UntilF = None,
    all_units: Annotated[bool, typer.Option("--all", help="Every active unit of the cube.")] = False,
    cube: Annotated[str, typer.Option("--cube", metavar="CUBE", help="The cube to learn from.")] = "default",
    model: Annotated[str | None, typer.Option("--model", metavar="GGUF",
                                              help="The chat model to learn for (default: \\[chat] model, else "
                                                   "Gemma 3 270M).")] = None,
    rank: Annotated[int, typer.Option("--rank", metavar="R", help="The adapter's rank.", min=1, max=64)] = 8,
    steps: Annotated[int, typer.Option("--steps", metavar="N", help="Training steps.", min=1, max=100_000)] = 300,
    layers: Annotated[str, typer.Option("--layers", metavar="TENSORS",
                                        help="Which of the last block's matrices learn (comma-separated: "
                                             "attn_output, ffn_gate, ffn_up, ffn_down).")]
    = "attn_output,ffn_gate,ffn_up,ffn_down",
    general: Annotated[int, typer.Option("--general", metavar="N",
                                         help="General questions whose answers learning keeps as they were "
                                              "(fewer: faster, more changes elsewhere).", min=0, max=40)] = 40,
    variants: Annotated[int, typer.Option("--variants", metavar="N",
                                          help="Rephrasings of each question learned besides it (\"Remind me, "
                                               "...?\"): answers that hold however a question is put.",
                                          min=0, max=5)] = 3,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="The same units, options and seed give the "
                                                                  "same adapter.")] = 0,
    eval_file: Annotated[str | None, typer.Option("--eval", metavar="FILE",
                                                  help='Probe lines {"q", "a"} (answerable) and {"q"} (unrelated): '
                                                       "report answers with and without the adapter; a leak fails "
                                                       "the gate.")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Save it, but do not enable it.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Enable it even if it fails its gate.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an adapter of the same name.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Learn memories into a LoRA adapter for the chat model (parametric memory).

    A unit whose meta has `question` and `answer` (chat episodes do) teaches
    that answer to that question; any other unit teaches its text. Training
    runs on the CPU in numpy, on the model's last block; llama.cpp then checks
    that the adapter reproduces what it learned (its gate), and an adapter
    that passes is enabled: `memos chat` applies it to the questions that are
    about what it learned. Nothing is saved until the end (one commit);
    Ctrl-C leaves the store as it was.

    Examples:

      memos learn facts --kind fact

      memos learn alice --query "Alice" -k 30 --eval probes.jsonl

      memos learn prefs 01J0ABC... 01J0DEF... --steps 600 --replace
    """
    from memos_cli.chat.session import chat_settings
    from memos_cli.models.generator import load_generator
    from memos_cli.parametric.learn import passes_gate, qa_of, to_record
    from memos_cli.parametric.lora import LoraOptions
    from memos_cli.store import params

    name = params.check_param_name(name)
    targets = tuple(t.strip() for t in layers.split(",") if t.strip())
    options = LoraOptions(rank=rank, alpha=2.0 * rank, steps=steps, seed=seed, targets=targets, general=general,
                          variants=variants)
    probes = None
    if eval_file is not None:
        from memos_cli.parametric.evaluate import read_probes

        probes = read_probes(eval_file)
    store = open_existing_store(ctx)
    if not replace and (store.root / params.record_path(name)).exists():
        raise UsageError(f"a parametric memory named {name} exists; use --replace to replace it")
    units = _select(store, ids or [], query, k, _filters(kind, tag, cube, None, since, until), all_units)
    spec, _size = chat_settings(store, model, None)
    started = time.perf_counter()
    generator = load_generator(spec, n_ctx=2048)
    with progress_bar(not json_out) as progress:
        from memos_cli.parametric.learn import learn as learn_units

        learned = learn_units(generator, units, options, progress)
        ok, why = passes_gate(learned)
        evaluation = None
        if probes is not None:
            evaluation = _evaluate(store, generator, learned, units, probes, progress)
            if ok and evaluation["leaks"]:
                ok, why = False, f"{evaluation['leaks']} unrelated answers leak what it learned"
    enabled = (ok or force) and not disabled
    report = {"gate": {"passed": ok, "why": why}, "accuracy": round(learned.accuracy, 4),
              "units_reproduced": learned.examples_right, "general_kept": round(learned.retained, 4),
              "rounds": learned.rounds, "candidates": learned.candidates, "rows": learned.rows,
              "qa_units": sum(1 for u in units if qa_of(u)),
              "seconds": {key: round(v, 2) for key, v in learned.seconds.items()}}
    if evaluation is not None:
        report["eval"] = {key: v for key, v in evaluation.items() if key != "details"}
    record, blob = to_record(name, cube, generator, units, learned, enabled=enabled, report=report)
    record = params.save(store, record, blob, replace=replace)
    seconds = time.perf_counter() - started
    say_notices(store)
    if json_out:
        print_json({**record.to_json(), "bytes": len(blob), "commit": store.repo.head(), "seconds": round(seconds, 2),
                    **({"eval_details": evaluation["details"]} if evaluation else {})})
        return
    state = "enabled" if enabled else "saved, not enabled"
    print(f"learned {name} from {len(units)} units in {seconds:.0f}s: {state}; {why}")
    if evaluation is not None:
        e = evaluation
        print(f"eval: answered {e['answered']}/{e['answerable']} (without it {e['answered_base']}), unrelated "
              f"unchanged {e['unrelated_unchanged']}/{e['unrelated']}, leaks {e['leaks']}")
    if not ok and not force:
        print("memos: the adapter failed its gate; `memos param enable` or --force enables it anyway",
              file=sys.stderr)


def _select(store: Any, ids: list[str], query: str | None, k: int, filters: Any, all_units: bool) -> list[Any]:
    """The units to learn: by id, by recall, by filters (or --all); each active, each once."""
    from memos_cli.errors import NotFoundError

    selected: dict[str, Any] = {}
    filtered = any([filters.kind, filters.tags, filters.since, filters.until])
    if not (ids or query or filtered or all_units):
        raise UsageError("say which units to learn: ids, --query, --kind/--tag/--since/--until, or --all")
    if ids:
        found = {u.id: u for u in store.get_many(ids)}
        for uid in ids:
            unit = found.get(uid)
            if unit is None:
                raise NotFoundError(f"no unit {uid}")
            if unit.status != "active":
                raise UsageError(f"unit {uid} is {unit.status}: only active units can be learned")
            selected[unit.id] = unit
    if query:
        for hit in store.recall(query, k, filters, context=False):
            selected.setdefault(hit.unit.id, hit.unit)
    elif filtered or all_units:
        for unit in store.list(filters, limit=0):
            selected.setdefault(unit.id, unit)
    if not selected:
        raise UsageError("no units selected: nothing matches")
    return sorted(selected.values(), key=lambda u: u.id)


def _evaluate(store: Any, generator: Any, learned: Any, units: list[Any], probes: Any, progress: Any) -> dict[str, Any]:
    from memos_cli.parametric.evaluate import evaluate
    from memos_cli.parametric.learn import qa_of
    from memos_cli.parametric.routing import FLOOR, Router

    router = Router(store.embedder)
    keys, key_ids = router.keys(units)
    adapter = generator.load_lora(learned.tensors, learned.alpha, "evaluating")

    def route(question: str) -> bool:
        return router.decide(router.question(question), keys, key_ids, FLOOR).applied

    answers = [qa[1] for u in units if (qa := qa_of(u))]
    try:
        return evaluate(generator, adapter, route, probes[0], probes[1], answers, progress)
    finally:
        generator.free_lora(adapter)
