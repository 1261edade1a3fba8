"""The CLI end to end in subprocesses: output formats and every bad input of the issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import assert_clean_failure, commit_count, head

pytestmark = pytest.mark.slow  # each call starts Python and imports LanceDB


@pytest.fixture
def filled(cli, tmp_path):
    root = tmp_path / "store"
    lines = [
        {"text": "Alice prefers green tea to coffee", "kind": "preference", "tags": ["alice"], "time": "2023-06-01",
         "meta": {"dia_id": "D1:1"}},
        {"text": "Bob adopted a dog named Pixel", "kind": "fact", "tags": ["bob"], "time": "2024-02-01"},
        {"text": "The quarterly report is due on Friday", "tags": ["work"], "cube": "work"},
    ]
    done = cli("import", "-", input="".join(json.dumps(x) + "\n" for x in lines))
    assert done.returncode == 0, done.err
    return root


def test_add_prints_the_id_and_show_finds_it(cli, tmp_path):
    done = cli("add", "Carol", "plays", "the", "cello", "--kind", "fact", "--tag", "carol", "--meta", "source=chat",
               "--time", "2024-01-02", "--importance", "0.8")
    assert done.returncode == 0, done.err
    uid = done.out.strip()
    assert len(uid) == 14 and done.err == ""
    shown = json.loads(cli("show", uid, "--json").out)
    assert shown["text"] == "Carol plays the cello" and shown["meta"] == {"source": "chat"}
    assert shown["tags"] == ["carol"] and shown["time"].startswith("2024-01-0") and shown["importance"] == 0.8
    assert commit_count(tmp_path / "store") == 2  # init + add


def test_add_from_stdin(cli):
    done = cli("add", "-", input="multi\nline memory\n")
    assert done.returncode == 0, done.err
    assert json.loads(cli("show", done.out.strip(), "--json").out)["text"] == "multi\nline memory\n"


def test_recall_json_and_batch(cli, filled):
    one = json.loads(cli("recall", "what", "does", "Alice", "drink", "-k", "2", "--json").out)
    assert one["query"] == "what does Alice drink" and len(one["results"]) == 2
    top = one["results"][0]
    assert top["text"].startswith("Alice prefers") and top["meta"] == {"dia_id": "D1:1"}
    assert set(top) >= {"id", "text", "score", "kind", "tags", "time", "meta", "sources"}
    queries = "".join(json.dumps(q) + "\n" for q in [{"query": "Bob's dog", "k": 1}, {"query": "report", "k": 3}])
    done = cli("recall", "--batch", "-", "--json", input=queries)
    assert done.returncode == 0, done.err
    answers = [json.loads(line) for line in done.out.splitlines()]
    assert [a["query"] for a in answers] == ["Bob's dog", "report"]
    assert len(answers[0]["results"]) == 1 and answers[0]["results"][0]["text"].startswith("Bob adopted")
    assert len(answers[1]["results"]) == 3
    assert commit_count(filled) == 2  # reads make no commit


def test_recall_filters_and_text_output(cli, filled):
    done = cli("recall", "tea", "--cube", "work", "--json")
    assert [r["cube"] for r in json.loads(done.out)["results"]] == ["work"]
    done = cli("recall", "pet", "--since", "2024-01-01", "--until", "2025-01-01", "--json")
    assert [r["text"] for r in json.loads(done.out)["results"]] == ["Bob adopted a dog named Pixel"]
    text = cli("recall", "Alice tea")
    assert text.returncode == 0 and "Alice prefers" in text.out


def test_list_and_stats(cli, filled):
    listed = json.loads(cli("list", "--json").out)
    assert [u["text"] for u in listed][0] == "The quarterly report is due on Friday"  # newest first
    assert len(json.loads(cli("list", "--tag", "bob", "--json").out)) == 1
    stats = json.loads(cli("stats", "--json").out)
    assert stats["units"] == 3 and stats["by_cube"] == {"default": 2, "work": 1}
    assert stats["by_kind"]["preference"] == 1 and stats["git_bytes"] > 0 and stats["tables_bytes"] > 0
    assert cli("stats").returncode == 0 and cli("list").returncode == 0


def test_init_twice_and_help(cli, tmp_path):
    assert "created" in cli("init").out
    assert "already" in cli("init").out
    for cmd in ("add", "import", "recall", "list", "show", "stats", "init", "compact", "consolidate", "demo"):
        done = cli(cmd, "--help")
        assert done.returncode == 0 and "Example" in done.out, cmd


@pytest.mark.parametrize(("cmd", "shown"), [(("chat",), "[chat] model"), (("recall",), "[recall] k"),
                                           (("kv", "build"), "[consolidate.heat]"),
                                           (("consolidate",), "[consolidate.*] tables")])
def test_help_keeps_the_names_of_config_tables(cli, cmd, shown):
    # rich's markup would take "[chat]" for a style and drop it: the help escapes it
    done = cli(*cmd, "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0 and shown in done.out, done.out


def test_demo_adds_recalls_and_shows_history(cli, tmp_path):
    done = cli("demo", "--keep", str(tmp_path / "demo"))
    assert done.returncode == 0, done.err
    assert "memos recall" in done.out and "init: memos store" in done.out and "add: 1 unit" in done.out
    assert "-Alice moved to Lisbon" in done.out and "rollback: to" in done.out
    words = " ".join(done.out.split())  # rich wraps long lines at the terminal's width
    assert "loaded from its KV cache" in words and "prefilled" in words and "saved as episode" in words
    assert "merged 1, superseded 1" in words and "consolidate: merged 1, superseded 1" in words
    assert "holds an aws-key" in words and "[redacted:aws-key]" in words and "0 findings" in words
    # init, five adds, an edit and its rollback, a redacted add, a pin, one saved chat turn (the two others
    # are --no-save), three more adds and one consolidate
    assert commit_count(tmp_path / "demo") == 15


def test_compact(cli, filled):
    for i in range(3):
        cli("add", f"note {i}")
    done = cli("compact", "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["git_bytes_after"] > 0
    assert len(json.loads(cli("list", "--json", "-n", "0").out)) == 6


# ---- bad input: one line on stderr, non-zero exit, store unchanged -------------------

@pytest.mark.parametrize(
    "args,stdin,match",
    [
        (["add", ""], None, "text is empty"),
        (["add", "   "], None, "text is empty"),
        (["add", "-"], b"", "text is empty"),
        (["add", "-"], b"caf\xe9 latte\n", "not valid UTF-8"),
        (["add", "-"], b"x" * (1024 * 1024 + 1), "over"),
        (["add", "hello", "--time", "next tuesday-ish"], None, "bad time"),
        (["add", "hello", "--ttl", "forever"], None, "bad ttl"),
        (["add", "hello", "--kind", "two words"], None, "bad kind"),
        (["add", "hello", "--meta", "novalue"], None, "key=value"),
        (["import", "-"], b'{"text": "ok"}\n{"text": "broken"\n', "line 2: not valid JSON"),
        (["import", "-"], b'{"text": "ok"}\n{"text": "x", "time": "someday"}\n', "line 2: bad time"),
        (["import", "-"], b'{"text": "ok"}\n{"text": ""}\n', "line 2: text is empty"),
        (["import", "-"], b'{"text": "ok"}\n[1, 2]\n', "line 2: expected a JSON object"),
        (["import", "-"], b'{"text": "ok"}\n{"txt": "typo"}\n', "line 2: unknown field"),
        (["import", "-"], b'\xff\xfe{"text": "x"}\n', "not valid UTF-8"),
        (["import", "/nonexistent/file.jsonl"], None, "no such file"),
        (["show", "zzzzzzzzzzzzzz"], None, "no memory with id"),
        (["recall", "tea", "--since", "soonish"], None, "bad --since"),
        (["recall", "--batch", "-"], b'{"query": "tea"}\n{"q": "x"}\n', "line 2"),
        (["recall", "--batch", "-"], b'{"query": "tea", "k": 0}\n', "bad k"),
        (["list", "--status", "weird"], None, "invalid value for '--status'"),
        (["recall", "tea", "-k", "0"], None, "invalid value for '-k'"),
        (["add", "tea", "--no-such-flag"], None, "no such option"),
        (["recall"], None, "give a query"),
    ],
)
def test_bad_input_fails_cleanly(cli, filled, args, stdin, match):
    before = head(filled)
    assert_clean_failure(cli(*args, input=stdin), filled, before, match)


def test_unknown_id_and_reads_of_a_missing_store(cli, tmp_path):
    assert_clean_failure(cli("list", store=tmp_path / "nothing"), match="no memos store")
    assert_clean_failure(cli("recall", "x", store=tmp_path / "nothing"), match="no memos store")
    assert_clean_failure(cli("compact", store=tmp_path / "nothing"), match="no memos store")
    assert not (tmp_path / "nothing").exists()


def test_store_path_that_is_a_file(cli, tmp_path):
    (tmp_path / "file").write_text("not a store")
    assert_clean_failure(cli("add", "x", store=tmp_path / "file"), match="is a file")
    assert_clean_failure(cli("add", "x", store=tmp_path / "file" / "sub"), match="is a file")
    assert (tmp_path / "file").read_text() == "not a store"


def test_store_path_not_writable(cli, tmp_path):
    # /proc refuses new files even to root, for whom permission bits do not count.
    assert_clean_failure(cli("add", "x", store="/proc/memos-store"), match="cannot write")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert_clean_failure(cli("add", "x", store=ro / "store"), match="cannot write")


def test_existing_store_not_writable(cli, filled):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
    before = head(filled)
    os.chmod(filled, 0o500)
    try:
        assert_clean_failure(cli("add", "x"), match="cannot write")
    finally:
        os.chmod(filled, 0o755)
    assert head(filled) == before


def test_store_from_a_newer_schema(cli, filled):
    path = filled / "memos.toml"
    path.write_text(path.read_text().replace("schema_version = 3", "schema_version = 7"))
    subprocess.run(["git", "-C", str(filled), "commit", "-qam", "from the future"], check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    before = head(filled)
    for args in (["add", "x"], ["recall", "x"], ["list"], ["import", "-"]):
        assert_clean_failure(cli(*args, input=b'{"text": "x"}\n'), filled, before, "newer memos")


def test_second_writer_gets_a_clear_message(cli, filled):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from memos_cli.lock import StoreLock
        StoreLock(Path(sys.argv[1]) / ".git" / "memos" / "lock").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """), str(filled)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = head(filled)
        done = cli("add", "blocked", env={"MEMOS_LOCK_TIMEOUT": "0.5"})
        assert_clean_failure(done, filled, before, f"locked by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_next_command_restores_a_half_written_store_and_says_so(cli, filled):
    from .test_store import CRASH_MID_WRITE

    before = head(filled)
    crashed = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(filled)], capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    done = cli("list", "--json")
    assert done.returncode == 0, done.err
    assert done.err.startswith("memos: recovered from an interrupted import"), done.err
    assert len(json.loads(done.out)) == 3 and head(filled) == before
    assert cli("list", "--json").err == ""  # said once


PANDAS_PROBE = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("pandas loaded:", sys.modules.get("pandas") is not None, file=sys.stderr))
    from memos_cli.cli.app import main
    sys.argv = ["memos", "--store", sys.argv[1], "recall", "green tea", "--json"]
    main()
""")


def test_a_command_starts_without_pandas(filled):
    """pandas is installed (for the embedding model's package) and pyarrow would import it as the
    table opens, 0.5 s of every command; the CLI does without, and recall still works."""
    done = subprocess.run([sys.executable, "-c", PANDAS_PROBE, str(filled)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pandas loaded: False" in done.stderr
    assert json.loads(done.stdout)["results"][0]["text"] == "Alice prefers green tea to coffee"
