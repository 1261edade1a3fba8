"""`memos chat` and activation memory (`memos kv`), with the real Gemma 3 270M.

Every test here loads the chat model (about a second) at least once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import assert_clean_failure, commit_count, git, head

PINNED = [
    "Alice lives in Lisbon and works as a marine biologist.",
    "Bob drinks green tea every morning before his run.",
    "The team's project deadline is the third of March.",
]
OTHER = ["Carol adopted a grey cat called Pixel.", "Dmitri is learning to play the cello."]
Q = "Where does Alice live?"


@pytest.fixture(scope="module")
def chat_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: three pinned memories, two others, and a kv cache of the pinned ones."""
    from memos_cli.store.store import MemoryStore

    root = tmp_path_factory.mktemp("chat") / "store"
    store = MemoryStore(root)
    for text in PINNED:
        store.add(text, pinned=True)
    for text in OTHER:
        store.add(text)
    done = subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(root), "kv", "build"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def chat_store(chat_template: Path, tmp_path: Path) -> Path:
    """A copy of the template store at ``tmp_path/store``, where the ``cli`` fixture works."""
    root = tmp_path / "store"
    shutil.copytree(chat_template, root, symlinks=True)
    return root


def ask(cli, *args: str) -> dict:
    done = cli("chat", Q, "--temperature", "0", "--max-tokens", "24", "--json", *args)
    assert done.returncode == 0, done.err
    data = json.loads(done.out)
    data["stderr"] = done.err
    return data


def kv_file(root: Path) -> Path:
    files = sorted((root / "tables" / "kv").glob("*.safetensors"))
    assert len(files) == 1, files
    return files[0]


def test_greedy_answer_is_the_same_with_and_without_the_cache(chat_store: Path, cli) -> None:
    with_kv = ask(cli, "--no-save")
    without = ask(cli, "--no-save", "--no-kv")
    assert with_kv["head"]["source"] == "kv" and with_kv["head"]["kv_bytes"] > 0
    assert without["head"]["source"] == "prefill"
    assert with_kv["head"]["tokens"] == without["head"]["tokens"] > 30
    assert with_kv["answer"] and with_kv["answer"] == without["answer"]
    assert [m["id"] for m in with_kv["memories"]] == [m["id"] for m in without["memories"]]
    # The head holds the pinned units; recall brings the others, never the head's again.
    assert len(with_kv["head"]["units"]) == 3
    assert not set(with_kv["head"]["units"]) & {m["id"] for m in with_kv["memories"]}
    assert with_kv["stderr"] == "" and with_kv["saved"] is None


def test_each_turn_is_saved_as_an_episode_in_one_commit(chat_store: Path, cli) -> None:
    before = commit_count(chat_store)
    data = ask(cli)
    assert commit_count(chat_store) == before + 1
    unit = json.loads(cli("show", data["saved"], "--json").out)
    assert unit["kind"] == "episode" and unit["meta"]["session"] == data["session"]
    assert unit["text"] == f"User: {Q}\nAssistant: {data['answer']}"
    # --no-save keeps nothing.
    ask(cli, "--no-save")
    assert commit_count(chat_store) == before + 1
    # The cache was not touched by chatting: loading never modifies it in place.
    assert ask(cli, "--no-save")["head"]["source"] == "kv"


def test_one_shot_prints_only_the_answer_and_reads_stdin(chat_store: Path, cli) -> None:
    done = cli("chat", "--temperature", "0", "--max-tokens", "24", "--no-save", input=Q + "\n")
    assert done.returncode == 0 and done.err == ""
    assert done.out.strip() == ask(cli, "--no-save")["answer"]


def test_a_changed_unit_makes_the_cache_stale_and_rebuild_replaces_it(chat_store: Path, cli) -> None:
    pinned = json.loads(cli("list", "--pinned", "--json").out)
    assert cli("edit", pinned[0]["id"], "--text", "Alice moved to Porto last spring.").returncode == 0
    listed = json.loads(cli("kv", "list", "--json").out)
    assert [a["status"] for a in listed] == ["stale"] and "changed" in listed[0]["reason"]
    stale = ask(cli, "--no-save")
    assert stale["head"]["source"] == "prefill" and "stale" in stale["stderr"]
    rebuilt = ask(cli, "--no-save", "--rebuild")
    assert rebuilt["head"]["source"] == "kv" and "rebuilding" in rebuilt["stderr"]
    listed = json.loads(cli("kv", "list", "--json").out)
    assert [a["status"] for a in listed] == ["current"] and listed[0]["id"] != stale["head"]["activation"]
    assert len(list((chat_store / "tables" / "kv").glob("*.safetensors"))) == 1  # the old file is gone
    # Pinning one more unit changes the pinned set: stale again.
    other = json.loads(cli("list", "--unpinned", "--json").out)[0]["id"]
    assert cli("pin", other).returncode == 0
    assert json.loads(cli("kv", "list", "--json").out)[0]["status"] == "stale"


def test_a_cache_for_another_context_size_is_not_loaded(chat_store: Path, cli) -> None:
    data = ask(cli, "--no-save", "--ctx", "4096")
    assert data["head"]["source"] == "prefill"
    assert "other model" in data["stderr"] and "ctx 8192" in data["stderr"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_or_missing_cache_is_refused_reported_and_repaired(chat_store: Path, cli, damage: str) -> None:
    path = kv_file(chat_store)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    got = ask(cli, "--no-save")
    assert got["head"]["source"] == "prefill" and got["answer"]
    assert ("sha256" in got["stderr"]) if damage != "delete" else ("missing" in got["stderr"])
    check = cli("check", "--json")
    assert check.returncode == 1
    kv_problems = [p for p in json.loads(check.out)["problems"] if p["area"] == "kv"]
    assert len(kv_problems) == 1 and ("missing" if damage == "delete" else "damaged") in kv_problems[0]["message"]
    assert cli("check", "--repair").returncode == 0
    assert cli("check").returncode == 0
    assert json.loads(cli("kv", "list", "--json").out) == []
    assert not list((chat_store / "tables" / "kv").glob("*.safetensors"))


def test_an_orphaned_cache_file_is_reported_and_removed(chat_store: Path, cli) -> None:
    stray = kv_file(chat_store).with_name("0" * 64 + ".safetensors")
    shutil.copy(kv_file(chat_store), stray)
    check = cli("check", "--json")
    assert check.returncode == 1 and "orphaned" in check.out
    assert cli("check", "--repair").returncode == 0
    assert not stray.exists() and kv_file(chat_store).exists()
    assert cli("check").returncode == 0


def test_kv_list_show_rm(chat_store: Path, cli) -> None:
    [record] = json.loads(cli("kv", "list", "--json").out)
    assert record["status"] == "current" and record["selection"] == {"pinned": True}
    assert len(record["units"]) == 3 and all(u["version"] == 1 for u in record["units"])
    assert record["model"]["arch"] == "gemma3" and record["model"]["n_ctx"] == 8192
    assert record["bytes"] == kv_file(chat_store).stat().st_size
    shown = json.loads(cli("kv", "show", record["id"][:8], "--text", "--json").out)
    assert all(text in shown["preamble"] for text in PINNED)
    assert cli("kv", "show", record["id"]).returncode == 0
    before = head(chat_store)
    assert cli("kv", "rm", record["id"], "--yes").returncode == 0
    assert json.loads(cli("kv", "list", "--json").out) == []
    assert not list((chat_store / "tables" / "kv").glob("*.safetensors"))
    assert head(chat_store) == before  # caches are not history
    assert git(chat_store, "status", "--porcelain", "--untracked-files=all") == ""


def test_kv_build_by_heat_and_by_query(chat_store: Path, cli) -> None:
    top = json.loads(cli("kv", "build", "--top", "2", "--json").out)
    assert top["selection"] == {"top": 2} and len(top["units"]) == len(PINNED) + 2  # the pinned ones, and 2 more
    query = json.loads(cli("kv", "build", "--query", "cat", "-k", "1", "--json").out)
    assert query["selection"] == {"query": "cat", "k": 1} and len(query["units"]) == 1
    assert len(json.loads(cli("kv", "list", "--json").out)) == 3


def test_purge_removes_the_caches_built_from_a_unit(chat_store: Path, cli) -> None:
    pinned = json.loads(cli("list", "--pinned", "--json").out)
    secret = pinned[0]["text"].split()[-1].rstrip(".")
    done = cli("purge", pinned[0]["id"], "--yes", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(cli("kv", "list", "--json").out) == []
    for path in (chat_store / "tables").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_bad_inputs_fail_cleanly(chat_store: Path, cli, tmp_path: Path) -> None:
    before = head(chat_store)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    assert_clean_failure(cli("chat", Q, "--model", str(tmp_path / "nope.gguf")), chat_store, before, "not found")
    assert_clean_failure(cli("chat", Q, "--model", str(not_gguf)), chat_store, before, "not a GGUF")
    assert_clean_failure(cli("kv", "build", "--model", str(not_gguf)), chat_store, before, "not a GGUF")
    assert_clean_failure(cli("chat", input=""), chat_store, before, "stdin is empty")
    assert_clean_failure(cli("chat", input="  \n"), chat_store, before, "stdin is empty")
    assert_clean_failure(cli("kv", "show", "zzzzzzzz"), chat_store, before, "no activation memory")
    assert_clean_failure(cli("kv", "build", "--top", "3", "--pinned"), chat_store, before, "one of")
    assert_clean_failure(cli("kv", "build", "--cube", "empty"), chat_store, before, "no pinned memories")
    assert_clean_failure(cli("chat", Q, "--kv", "zzzzzzzz"), chat_store, before, "no activation memory")
    # A memory block longer than the context.
    assert cli("add", " ".join(["a long pinned memory about many things"] * 40), "--pin", "--cube", "big").returncode == 0
    before = head(chat_store)
    assert_clean_failure(cli("kv", "build", "--cube", "big", "--ctx", "256"), chat_store, before, "too long for a context")
    assert_clean_failure(cli("chat", Q, "--cube", "big", "--ctx", "256"), chat_store, before, "too long for a context")
    assert list((chat_store / "tables" / "kv").glob("*.safetensors")) == [kv_file(chat_store)]


def test_ctrl_c_during_an_answer_saves_nothing(chat_store: Path) -> None:
    before = commit_count(chat_store)
    # A question this seed answers at length (300 tokens and more): Ctrl-C comes at its first
    # streamed byte, long before the answer could end and be saved.
    proc = subprocess.Popen(
        [sys.executable, "-m", "memos_cli", "--store", str(chat_store), "chat",
         "Describe, step by step and in great detail, a whole day in Alice's life in Lisbon.",
         "--max-tokens", "2000", "--temperature", "1.0", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(),
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)  # the first streamed byte: generation is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text  # interrupted: not 0, as a finished answer would exit
    assert text.splitlines()[-1] == "memos: interrupted" and "Traceback" not in text
    assert first  # it was answering when interrupted
    assert commit_count(chat_store) == before  # the cut turn was not saved
    assert git(chat_store, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (chat_store / ".git" / "memos" / "journal.json").exists()  # no write was left half done


def test_an_interrupted_turn_keeps_the_turns_saved_before_it(chat_store: Path) -> None:
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(chat_store)
    before = commit_count(chat_store)
    with load_generator(None) as generator:
        session = ChatSession(store, generator, ChatOptions(temperature=0.0, max_tokens=16, keep_head=True))
        assert session.head.source == "kv"
        first = "".join(session.ask(Q))
        saved = session.last.saved
        with pytest.raises(KeyboardInterrupt):
            for _ in session.ask("And what does Bob drink?"):
                raise KeyboardInterrupt
        # The session goes on from the saved head after the interruption.
        again = "".join(session.ask(Q))
    assert first and saved and store.get(saved).meta["session"] == session.id
    assert len(session.turns) == 2 and commit_count(chat_store) == before + 2
    assert again  # the head was restored: the model still answers


def test_a_conversation_resumes_from_its_kept_state_and_answers_as_a_fresh_session(chat_store: Path) -> None:
    """Each turn evaluates only the last exchange, not the whole conversation again, and the answer
    is the one a new session given the same history would give."""
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(chat_store)
    questions = [Q, "What does Bob drink?", "What is the deadline?", "Who adopted a cat?"]
    options = {"temperature": 0.0, "max_tokens": 12, "save": False, "keep_head": True}
    with load_generator(None) as generator:
        session = ChatSession(store, generator, ChatOptions(**options))
        # Another session on the same model (the server's, of another cube) answers in between.
        closed_book = ChatSession(store, generator, ChatOptions(recall=False, **options))
        "".join(closed_book.ask("Hello, who are you?"))
        session.history[:] = [("Hello, who are you?", "An assistant.")]
        "".join(session.ask(Q))
        "".join(session.ask("What does Bob drink?"))  # from the state kept after the first exchange
        between = session.history[:]
        session.history.clear()
        for question in questions:
            "".join(session.ask(question))
        turns = session.turns[2:]
        head = len(session.head.tokens)
        # Between turns (while the user types), an interactive session evaluates the conversation ahead.
        session.ready()
        conversation = sum(len(p) for p in session._conversation(session.history)[0])
        "".join(session.ask("Thanks!"))
        after_ready = session.last
        fresh = ChatSession(store, generator, ChatOptions(**options))
        fresh.history[:] = between[:2]
        "".join(fresh.ask("What does Bob drink?"))
        fresh.history[:] = session.history[:3]
        "".join(fresh.ask(questions[3]))
        # A history that is not the kept one's continuation (an edited conversation) starts from the head.
        session.history[:] = [("Something else?", "Yes.")]
        "".join(session.ask(Q))
        edited = session.last
    assert between[2][1] == fresh.turns[0].answer and between[2][1]
    cached = [t.cached_tokens for t in turns]
    assert cached[0] == cached[1] == head < cached[2] < cached[3]  # the exchanges before the last were kept
    assert all(t.prompt_tokens - t.cached_tokens < turns[0].prompt_tokens + 40 for t in turns)
    assert fresh.last.cached_tokens == head and fresh.last.prompt_tokens == turns[3].prompt_tokens
    assert fresh.last.answer == turns[3].answer and turns[3].answer
    assert edited.cached_tokens == head and edited.answer
    assert after_ready.cached_tokens == conversation > cached[3]


def test_a_template_that_rewrites_earlier_turns_gets_the_whole_conversation_each_turn(chat_store: Path) -> None:
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import PromptFormat, load_generator
    from memos_cli.store.store import MemoryStore

    # The system message and the last three messages only: what it renders of a turn changes later.
    window = ("{% for m in messages %}{% if loop.first or loop.revindex <= 3 %}[{{ m.role }}] {{ m.content }}\n"
              "{% endif %}{% endfor %}[assistant]")
    with load_generator(None) as generator:
        generator.format = PromptFormat(window, "", "")
        session = ChatSession(MemoryStore(chat_store), generator, ChatOptions(temperature=0.0, max_tokens=8,
                                                                             save=False, keep_head=True))
        for question in (Q, "What does Bob drink?", "And Carol?"):
            "".join(session.ask(question))
    assert all(t.answer for t in session.turns)
    assert [t.cached_tokens for t in session.turns] == [len(session.head.tokens)] * 3  # no conversation kept
    assert session.turns[2].prompt_tokens < session.turns[1].prompt_tokens + 60  # the window, not the whole history


def test_a_stop_string_ends_the_answer_before_it_and_the_pieces_are_the_text() -> None:
    from memos_cli.models.generator import load_generator

    with load_generator(None) as gen:
        tokens = gen.tokenize("Alice lives in Lisbon and Bob lives in Paris.\nUser: Where do they live?\nAssistant:",
                              head=True)
        whole = list(gen.stream(tokens, temperature=0.0, max_tokens=24))
        text = "".join(whole)
        stop = text[len(text) // 2:len(text) // 2 + 3]
        assert len(stop) == 3, text
        cut = list(gen.stream(tokens, temperature=0.0, max_tokens=24, stop=[stop]))
    assert "".join(cut) == text[:text.index(stop)]
    assert len(whole) > 1  # streamed a token or so at a time, not held back to the end


def test_chat_k_and_budget_from_memos_toml_and_flags_over_them(chat_store: Path, cli) -> None:
    from memos_cli.chat.session import ChatOptions, ChatSession
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    def used(**options: object) -> int:
        session = ChatSession(MemoryStore(chat_store), gen, ChatOptions(save=False, min_relevance=0, max_tokens=1,
                                                                          **options))
        "".join(session.ask(Q))
        return len(session.last.memories)

    with load_generator(None) as gen:
        assert used() == 2  # the two that are not pinned
        assert cli("config", "set", "chat.k", "1").returncode == 0
        assert used() == 1 and used(k=2) == 2  # the flag wins
        assert cli("config", "set", "chat.budget", "0").returncode == 0
        assert used() == 0 and used(budget=1024) == 1  # no room for any, unless the flag makes some
    before = (chat_store / "memos.toml").read_text()
    for key, bad in (("chat.k", "0"), ("chat.budget", "-1"), ("chat.k", "many")):
        done = cli("config", "set", key, bad)
        assert done.returncode != 0 and len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err
    assert (chat_store / "memos.toml").read_text() == before


def test_an_interactive_session_on_a_terminal(chat_store: Path) -> None:
    import pty  # noqa: F401 - POSIX only, like the terminal it stands for
    import select

    before = commit_count(chat_store)
    other = json.loads(subprocess.run([sys.executable, "-m", "memos_cli", "--store", str(chat_store), "list",
                                       "--unpinned", "--json"], capture_output=True, text=True).stdout)[0]["id"]
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(chat_store), "chat", "--temperature", "0",
                             "--max-tokens", "16"], stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "MEMOS_CACHE": os.environ["MEMOS_CACHE"], "TERM": "dumb"})
    os.close(slave)
    seen = b""

    def until(marker: bytes, timeout: float = 90) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"timed out waiting for {marker!r}; got {seen[-500:]!r}"
            seen += os.read(master, 4096)
        head, _, seen = seen.partition(marker)
        return head

    banner = until(b"you> ")
    assert b"memory block of 3 units" in banner and b"activation memory" in banner
    os.write(master, Q.encode() + b"\n")
    answer = until(b"you> ")
    assert answer.strip()
    os.write(master, b"/memories\n")
    until(b"memory block: 3 units", 30)  # fails by timing out when it never comes
    os.write(master, f"/forget {other}\n".encode())
    until(f"forgot {other}".encode(), 30)
    until(b"you> ", 30)
    os.write(master, b"What does Bob drink?\n")  # on the conversation evaluated while the user typed
    assert until(b"you> ").strip()
    os.write(master, b"/quit\n")
    assert proc.wait(timeout=60) == 0
    os.close(master)
    assert commit_count(chat_store) == before + 3  # the two answered turns, and the forget


def test_a_block_grown_at_its_end_keeps_the_saved_state_and_answers_as_a_full_prefill(chat_store: Path) -> None:
    from memos_cli import activation
    from memos_cli.activation.prompt import head_text
    from memos_cli.models import kvcache
    from memos_cli.models.generator import load_generator
    from memos_cli.store.store import MemoryStore

    store = MemoryStore(chat_store)
    units = store.list(limit=0)
    pinned, others = [u for u in units if u.pinned], [u for u in units if not u.pinned]
    selection = activation.Selection(top=5)
    with load_generator(None) as gen:
        first = activation.build(store, gen, "default", selection, units=pinned)
        grown = activation.build(store, gen, "default", selection, units=pinned + others)
        assert first.extra["kept_tokens"] == 0  # nothing to start from
        assert first.n_tokens - 2 <= grown.extra["kept_tokens"] < grown.n_tokens  # only the new units prefilled
        assert [a.id for a in activation.records(store, "default") if a.selection == selection] == [grown.id]

        head, tail = gen.format.render(head_text(pinned + others), "", [], Q)
        question = gen.tokenize(head, head=True) + gen.tokenize(tail)
        gen.prefill(question[:grown.n_tokens])
        full = "".join(gen.stream(question, temperature=0.0, max_tokens=12))
        kv = kvcache.read(activation.kv_dir(store), grown.sha256)
        gen.load_state(kv.state, kv.tokens)
        from_grown = "".join(gen.stream(question, temperature=0.0, max_tokens=12))
        reordered = activation.build(store, gen, "default", selection, units=pinned + others[::-1])
    assert full and from_grown == full
    # Kept up to where the two differ: the pinned units and the start of the first other line (its date).
    assert first.n_tokens - 2 <= reordered.extra["kept_tokens"] < grown.n_tokens - 10
