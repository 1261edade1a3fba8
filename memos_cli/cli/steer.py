"""``memos steer``: build a steering vector from contrastive texts, calibrate its strength, save it."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from memos_cli.errors import NotFoundError, UsageError

from .app import app
from .common import open_store, print_json, progress_bar, read_source, say_notices


def _side(flag: str, path: str | None, tag: str | None) -> None:
    if (path is None) == (tag is None):
        raise UsageError(f"give --{flag} FILE or --{flag}-tag TAG (one of them)")


def _tagged(store: Any, tag: str, cube: str) -> list[Any]:
    """The active, unexpired units of ``cube`` with ``tag``, by id."""
    from memos_cli.plaintext.retrieval import Filters
    from memos_cli.plaintext.units import check_tags, utcnow

    (tag,) = check_tags([tag])
    if not store.exists():
        raise NotFoundError(f"no memories tagged {tag!r}: there is no store at {store.root}")
    now = utcnow()
    units = [u for u in store.list(Filters(tags=[tag], cube=cube), limit=0)
             if u.expires_at is None or u.expires_at > now]
    if not units:
        raise NotFoundError(f"no memories tagged {tag!r} in cube {cube} (see `memos list --tag {tag}`)")
    return sorted(units, key=lambda u: u.id)


@app.command()
def steer(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The steering vector's name.", show_default=False)],
    pos: Annotated[str | None, typer.Option("--pos", metavar="FILE", show_default=False,
                                            help="Texts to steer towards: one per line, or JSON lines with \"text\".")] = None,
    neg: Annotated[str | None, typer.Option("--neg", metavar="FILE", show_default=False,
                                            help="Texts to steer away from, as --pos.")] = None,
    pos_tag: Annotated[str | None, typer.Option("--pos-tag", metavar="TAG", show_default=False,
                                                help="Instead of --pos: the memories with this tag.")] = None,
    neg_tag: Annotated[str | None, typer.Option("--neg-tag", metavar="TAG", show_default=False,
                                                help="Instead of --neg: the memories with this tag.")] = None,
    cube: Annotated[str, typer.Option("--cube", metavar="CUBE",
                                      help="The cube of the tagged memories, and of the vector.")] = "default",
    layers: Annotated[str | None, typer.Option("--layers", metavar="A-B", show_default=False,
                                               help="Layers to steer (default: the middle of the model, 4-11 of 18).")] = None,
    strength: Annotated[str | None, typer.Option("--strength", metavar="X", show_default=False,
                                                 help="The strength to save, instead of calibrating one "
                                                      "(negative: towards --neg).")] = None,
    probe: Annotated[str | None, typer.Option("--probe", metavar="FILE", show_default=False,
                                              help="Calibration questions: one per line, or JSON lines {\"q\", \"a\"} "
                                                   "where \"a\" (optional) is what the answer must still say "
                                                   "(default: six built-in questions).")] = None,
    model: Annotated[str | None, typer.Option("--model", metavar="GGUF",
                                              help="The chat model (default: \\[chat] model in memos.toml, "
                                                   "else Gemma 3 270M).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a parametric memory of this name.")] = False,
    disabled: Annotated[bool, typer.Option("--disabled", help="Save it, but do not apply it in chat by default "
                                                              "(`memos param enable NAME` later).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the record, calibration and timings as JSON.")] = False,
) -> None:
    """Build a steering vector from contrastive texts and save it, in one commit.

    The vector is the mean difference of the model's hidden states between the
    positive and the negative texts (each read as a user's turn in the chat
    prompt), over the middle layers. Its default strength is calibrated: going
    up a ladder (0.125 to 2), the last strength before a probe question's
    answer is at risk of being empty (its first token ends it or breaks the
    line with probability above 0.1) or its greedy answer is unsound (blank,
    scattered, a loop, or no longer saying the expected answer the model
    gave unsteered). `memos chat` adds it, at that strength, to every answer
    while it is enabled; `memos param scale NAME X` changes it.

    Examples:

      memos steer cheerful --pos happy.txt --neg sad.txt

      memos steer formal --pos-tag formal --neg-tag casual --cube work --json

      memos steer terse --pos short.jsonl --neg long.jsonl --layers 6-10 --strength 0.3 --disabled
    """
    from memos_cli.plaintext.units import check_name
    from memos_cli.store import params

    started = time.perf_counter()
    name = params.check_param_name(name)
    check_name(cube, "cube")
    _side("pos", pos, pos_tag)
    _side("neg", neg, neg_tag)
    if pos_tag is not None and pos_tag == neg_tag:
        raise UsageError("--pos-tag and --neg-tag are the same tag")
    from memos_cli.parametric.active import parse_number

    given = None if strength is None else parse_number(strength, "strength")
    if given is not None and probe is not None:
        raise UsageError("--probe is for calibrating; with --strength there is none")

    import numpy as np

    from memos_cli.parametric import steer as lib

    wanted_layers = lib.parse_layers(layers) if layers is not None else None
    texts: dict[str, list[str]] = {}
    origin: dict[str, dict[str, Any]] = {}
    for side, path in (("pos", pos), ("neg", neg)):
        if path is not None:
            texts[side] = lib.parse_texts(read_source(path, f"--{side}"), path)
            origin[side] = {"file": path, "texts": len(texts[side]), "sha256": lib.texts_digest(texts[side])}
    probes: list[tuple[str, str | None]] = list(lib.DEFAULT_PROBES)
    if probe is not None:
        probes = lib.parse_probes(read_source(probe, "--probe"), probe)

    store = open_store(ctx)
    sources: list[dict[str, Any]] = []
    chosen: dict[str, set[str]] = {}
    for side, tag in (("pos", pos_tag), ("neg", neg_tag)):
        if tag is not None:
            units = _tagged(store, tag, cube)
            texts[side] = [u.text for u in units]
            chosen[side] = {u.id for u in units}
            origin[side] = {"tag": tag, "texts": len(units), "sha256": lib.texts_digest(texts[side])}
            sources += [{"id": u.id, "version": u.version} for u in units]
    both = sorted(chosen.get("pos", set()) & chosen.get("neg", set()))
    if both:
        raise UsageError(f"memory {both[0]} has both tags {pos_tag!r} and {neg_tag!r}")
    if not replace and (store.root / params.record_path(name)).exists():
        raise UsageError(f"a parametric memory named {name} exists; use --replace to replace it")

    from memos_cli.chat.session import chat_settings
    from memos_cli.models.generator import load_generator

    spec, _ = chat_settings(store, model, None)
    show = sys.stderr.isatty() and not json_out
    seconds: dict[str, float] = {}
    with progress_bar(show) as progress, load_generator(spec, n_ctx=2048) as generator:
        seconds["load_s"] = time.perf_counter() - started
        span = lib.check_layers(wanted_layers, generator.n_layer) if wanted_layers else lib.default_layers(generator.n_layer)
        t = time.perf_counter()
        direction = lib.build(generator, texts["pos"], texts["neg"], span, progress)
        seconds["build_s"] = time.perf_counter() - t
        table: list[dict[str, Any]] = []
        if given is None:
            t = time.perf_counter()
            value, table = lib.calibrate(generator, direction, probes, progress=progress)
            seconds["calibrate_s"] = time.perf_counter() - t
        else:
            value = given
        model_info = lib.model_of(generator)

    hparams: dict[str, Any] = {"layers": lib.layers_text(span), "prompt": "chat user turn", **origin}
    if given is None:
        hparams["calibration"] = {"probes": len(probes), "probe_file": probe, "ladder": list(lib.LADDER),
                                  "max_tokens": lib.PROBE_TOKENS, "break_limit": lib.BREAK_LIMIT}
    record = params.ParamRecord(
        name=name, kind="steer", model=model_info, cube=cube, sources=sources, enabled=not disabled,
        scale=value, hparams=hparams,
        report={"calibrated": given is None, "calibration": table, "norm": float(np.linalg.norm(direction))},
    )
    blob = lib.make_blob(record, direction, span)
    record = params.save(store, record, blob, replace=replace)
    say_notices(store)
    seconds["total_s"] = time.perf_counter() - started
    if json_out:
        print_json({**record.to_json(), "commit": store.repo.head(), "bytes": len(blob),
                    "seconds": {k: round(v, 3) for k, v in seconds.items()}})
        return
    how = f"calibrated on {len(probes)} probes" if given is None else "as given"
    state = "enabled" if record.enabled else "disabled (`memos param enable " + name + "`)"
    print(f"saved steering vector {name}: layers {lib.layers_text(span)}, strength {value:g} ({how}), "
          f"{len(texts['pos'])} positive and {len(texts['neg'])} negative texts, {state}")
