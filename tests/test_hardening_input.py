"""Issue 12, items 4, 6, 7, 9, 11 and 12: hostile text on the terminal, names and tags that
are not what they seem, times out of range, NaN in meta, local times, and the small ones."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memos_cli.cli.render import local_time, printable, safe
from memos_cli.errors import UsageError
from memos_cli.plaintext.units import (
    build_unit,
    check_meta,
    check_name,
    check_tags,
    is_unit_id,
    parse_duration,
    parse_meta_pairs,
    parse_time,
)

from .conftest import Runner, assert_clean_failure, git, head

slow = pytest.mark.slow  # each CLI call starts Python and imports LanceDB

# Colour, an OSC 0 window title and an OSC 52 clipboard write (ended by BEL or by ST), a
# one-byte CSI (0x9b) and NEL (0x85), both C1; CR and backspace, which redraw a line.
HOSTILE = ("tea [red]markup[/red] [/] \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x9b31m c1 \x85 nel \rover\x08 "
           "\x1b]52;c;cHduZWQ=\x07 \x1b]52;c;eA==\x1b\\ end")
RAW = ("\x1b", "\x07", "\x9b", "\x85", "\r", "\x08")
# Auckland; the POSIX rule where the machine has no zoneinfo (NZDT, +13, in March)
AUCKLAND = "Pacific/Auckland" if Path("/usr/share/zoneinfo/Pacific/Auckland").exists() else "NZST-12NZDT,M9.5.0,M4.1.0/3"
WIDE = {"COLUMNS": "400"}  # rich folds table cells at 80 columns otherwise


def _assert_safe(out: str) -> None:
    for ch in RAW:
        assert ch not in out, f"raw {ch!r} printed: {out!r}"


# ---- 4. terminal escapes --------------------------------------------------------------------


def test_printable_shows_control_characters_and_keeps_newlines_and_tabs() -> None:
    assert printable("a\x1b[31mb\x07\x9b\x85\x7f\x00\r\x08\tc\nd") == "a\\x1b[31mb\\x07\\x9b\\x85\\x7f\\x00\\x0d\\x08\tc\nd"
    assert printable("plain, ünïcødé 护照 ✓") == "plain, ünïcødé 护照 ✓"
    assert safe("[red]x[/red]\x1b") == "\\[red]x\\[/red]\\x1b"


@slow
def test_hostile_text_reaches_no_terminal_raw_and_json_keeps_it(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    added = cli("add", HOSTILE, "--tag", "[bold]tag[/bold]", "--meta", "note=\x1b]0;meta\x07 [red]m[/red]",
                "--kind", "fact", "--json")
    assert added.returncode == 0, added.err
    unit = json.loads(added.out)
    uid = unit["id"]
    assert unit["text"] == HOSTILE and unit["meta"] == {"note": "\x1b]0;meta\x07 [red]m[/red]"}
    edited = cli("edit", uid, "--text", HOSTILE + " \x1b]0;again\x07", "--meta", "more=\x9b1m")
    assert edited.returncode == 0, edited.err
    # A commit made by hand, whose subject `memos log` shows.
    git(root, "-c", "user.name=hand", "-c", "user.email=hand@x", "commit", "--allow-empty", "-q", "-m",
        "by hand \x1b]0;pwned\x07 \x9b2J [red]subject[/red]")

    outputs = {
        "show": cli("show", uid, env=WIDE),
        "show --history": cli("show", uid, "--history", env=WIDE),
        "list": cli("list", env=WIDE),
        "recall": cli("recall", "tea", env=WIDE),
        "recall --explain": cli("recall", "tea", "--explain", env=WIDE),
        "log": cli("log", env=WIDE),
        "diff": cli("diff", "HEAD~3", env=WIDE),
        "diff HEAD~2 HEAD~1": cli("diff", "HEAD~2", "HEAD~1", env=WIDE),
    }
    for name, done in outputs.items():
        assert done.returncode == 0, (name, done.err)
        _assert_safe(done.out)
        _assert_safe(done.err)
        assert "\\x1b" in done.out, (name, done.out)  # shown, visibly
    for name in ("show", "list", "recall", "diff"):
        assert "[red]markup[/red]" in outputs[name].out, (name, outputs[name].out)  # rich markup printed as text
    assert "[bold]tag[/bold]" in outputs["list"].out and "[red]m[/red]" in outputs["show"].out
    assert "[red]subject[/red]" in outputs["log"].out and "\\x9b2J" in outputs["log"].out

    # --json keeps the exact text
    text = HOSTILE + " \x1b]0;again\x07"
    assert json.loads(cli("show", uid, "--json").out)["text"] == text
    assert json.loads(cli("list", "--json").out)[0]["text"] == text
    assert json.loads(cli("recall", "tea", "--json").out)["results"][0]["text"] == text
    assert json.loads(cli("show", uid, "--json").out)["meta"]["more"] == "\x9b1m"
    (change,) = json.loads(cli("diff", "HEAD~2", "HEAD~1", "--json").out)["units"]
    assert change["fields"]["text"] == {"old": HOSTILE, "new": text}
    subjects = [c["summary"] for c in json.loads(cli("log", "--json").out)]
    assert "by hand \x1b]0;pwned\x07 \x9b2J [red]subject[/red]" in subjects


# ---- 6. names with a trailing newline -----------------------------------------------------


@pytest.mark.parametrize("value", ["work\n", "work\r\n", "\nwork", "wo rk", "work\x1b", ""])
def test_names_must_match_whole(value: str) -> None:
    with pytest.raises(UsageError):
        check_name(value, "cube")


def test_ids_and_durations_match_whole() -> None:
    uid = build_unit("x").id
    assert is_unit_id(uid) and not is_unit_id(uid + "\n")
    with pytest.raises(UsageError):
        parse_duration("3d\nx")


@slow
def test_import_and_options_refuse_a_name_with_a_trailing_newline(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("init").returncode == 0
    before = head(root)
    for field in ("cube", "user", "kind"):
        records = [{"text": "fine"}, {"text": "sneaky", field: "work\n"}]
        done = cli("import", "-", input="".join(json.dumps(r) + "\n" for r in records))
        assert done.returncode == 2
        assert_clean_failure(done, root, before, match=f"line 2: bad {field}")
        done = cli("add", "x", f"--{field}", "work\n")
        assert done.returncode == 2
        assert_clean_failure(done, root, before, match=f"bad {field}")


# ---- 7. extreme times and durations -------------------------------------------------------


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00",
                                   "99999999999999999999d ago", "9" * 400 + "y ago", "100000y ago"])
def test_parse_time_out_of_range_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match="bad --since"):
        parse_time(value, "--since")


def test_a_ttl_past_the_year_9999_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad ttl '100000y': too long"):
        build_unit("x", ttl="100000y")
    with pytest.raises(UsageError, match="too long"):
        parse_duration("9" * 400 + "d")
    assert build_unit("x", ttl="1000y").expires_at is not None


@slow
def test_extreme_times_are_usage_errors(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("add", "a memory").returncode == 0
    before = head(root)
    for args, match in [
        (("add", "x", "--ttl", "100000y"), "bad ttl '100000y': too long"),
        (("add", "x", "--ttl", "99999999999999999999d"), "bad ttl"),
        (("add", "x", "--time", "9999-12-31T23:59:59-05:00"), "bad time '9999-12-31T23:59:59-05:00': out of range"),
        (("recall", "q", "--since", "99999999999999999999d ago"), "bad --since"),
        (("list", "--until", "0001-01-01T00:00:00+05:00"), "bad --until"),
    ]:
        done = cli(*args)
        assert done.returncode == 2, (args, done.err)
        assert_clean_failure(done, root, before, match=match)


# ---- 9. NaN and Infinity -------------------------------------------------------------------


@pytest.mark.parametrize("meta", [{"x": math.nan}, {"x": [1, {"y": math.inf}]}, {"x": -math.inf}])
def test_meta_with_nan_or_infinity_is_refused(meta: dict) -> None:
    with pytest.raises(UsageError, match="NaN"):
        check_meta(meta)
    with pytest.raises(UsageError, match="NaN"):
        build_unit("x", meta=meta)


def test_meta_pairs_refuse_nan_but_keep_text_that_is_not_json() -> None:
    for pair in ("x=NaN", "x=-Infinity", 'x={"y": [NaN]}'):
        with pytest.raises(UsageError, match="not valid JSON"):
            parse_meta_pairs([pair])
    assert parse_meta_pairs(["title=Infinity War", 'x="NaN"', "n=1.5"]) == {
        "title": "Infinity War", "x": "NaN", "n": 1.5}


@slow
def test_nan_and_infinity_are_refused_from_every_input(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    uid = cli("add", "a memory").out.strip()
    before = head(root)
    attempts = [
        (("add", "x", "--meta", 'x={"y": NaN}'), "nan"),
        (("add", "x", "--meta", "x=Infinity"), "infinity"),
        (("add", "x", "--importance", "nan"), "importance"),
        (("edit", uid, "--meta", "x=NaN"), "nan"),
        (("edit", uid, "--importance", "nan"), "importance"),
    ]
    for args, match in attempts:
        done = cli(*args)
        assert done.returncode == 2, (args, done.err)
        assert_clean_failure(done, root, before, match=match)
    for line in ('{"text": "a", "meta": {"x": Infinity}}', '{"text": "a", "importance": NaN}',
                 '{"text": "a", "meta": {"x": [-Infinity]}}'):
        done = cli("import", "-", input='{"text": "fine"}\n' + line + "\n")
        assert done.returncode == 2, (line, done.err)
        assert_clean_failure(done, root, before, match="line 2: not valid JSON")
    done = cli("recall", "--batch", "-", input='{"query": "a", "k": NaN}\n')
    assert done.returncode == 2
    assert_clean_failure(done, match="line 1: not valid JSON")
    listed = cli("list", "--json").out  # nothing non-standard was written
    assert len(json.loads(listed)) == 1 and "NaN" not in listed and "Infinity" not in listed


# ---- 11. times in the local time zone ------------------------------------------------------


def test_local_time_shows_the_local_date_and_survives_the_ends_of_time() -> None:
    assert local_time(None) == "" and local_time("not a time") == "not a time"
    assert local_time(datetime(9999, 12, 31, 23, 59, tzinfo=UTC))  # east of Greenwich this overflows
    assert local_time("0001-01-01T00:00:00Z", date_only=True)


@slow
def test_a_bare_date_is_that_local_day_and_is_shown_back_as_it(cli: Runner, tmp_path: Path) -> None:
    tz = {"TZ": AUCKLAND, **WIDE}
    uid = cli("add", "pi day in Auckland", "--time", "2023-03-14", env=tz).out.strip()
    assert len(uid) == 14
    data = json.loads(cli("show", uid, "--json", env=tz).out)
    assert data["time"] == "2023-03-13T11:00:00Z"  # JSON: UTC, with its offset (Z)
    listed = cli("list", env=tz).out
    assert "2023-03-14" in listed and "2023-03-13" not in listed
    shown = cli("show", uid, env=tz).out
    assert "2023-03-14T00:00:00+13:00" in shown and "2023-03-13T11:00:00Z" not in shown
    assert "2023-03-14" in cli("recall", "pi day", env=tz).out
    # --since and --until take the same local day
    assert [u["id"] for u in json.loads(cli("list", "--since", "2023-03-14", "--json", env=tz).out)] == [uid]
    assert json.loads(cli("list", "--until", "2023-03-14", "--json", env=tz).out) == []
    # the same unit seen from UTC is on the 13th, at 11:00
    assert "2023-03-13" in cli("list", env={"TZ": "UTC", **WIDE}).out
    # a change of time, in diff, is local too
    assert cli("edit", uid, "--time", "2023-03-15", env=tz).returncode == 0
    changed = cli("diff", env=tz).out
    assert "2023-03-14T00:00:00+13:00 -> 2023-03-15T00:00:00+13:00" in changed, changed
    # a time at the end of UTC's calendar still lists in Auckland, where it is past the year 9999
    assert cli("add", "the end", "--time", "9999-12-31T23:00:00Z", env={"TZ": "UTC"}).returncode == 0
    end = cli("list", env=tz)
    assert end.returncode == 0 and "9999-12-31" in end.out, end.err


# ---- 12. the small ones --------------------------------------------------------------------


@slow
def test_the_lock_message_names_the_command_not_the_store_option(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("add", "first").returncode == 0
    lock = root / ".git" / "memos" / "lock"
    held, go = tmp_path / "held", tmp_path / "go"
    # A git clean filter that, while memos holds the lock (its file is not empty), waits for `go`:
    # the add stays inside its transaction until the test lets it finish.
    script = tmp_path / "hold.sh"
    script.write_text(f"if [ -s '{lock}' ]; then touch '{held}'; n=0; while [ ! -e '{go}' ] && [ $n -lt 600 ]; do "
                      f"sleep 0.05; n=$((n+1)); done; fi; exec cat\n")
    git(root, "config", "filter.hold.clean", f"sh '{script}'")
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "attributes").write_text("*.json filter=hold\n")
    writer = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "add", "second"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not held.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists(), "the writer never held the lock in its commit"
        info = json.loads(lock.read_text())
        assert info["command"] == "memos add" and info["pid"] == writer.pid
        done = cli("add", "third", env={"MEMOS_LOCK_TIMEOUT": "0.2"})
        assert done.returncode == 4
        assert_clean_failure(done, match=f"locked by pid {writer.pid}")
        assert "(memos add, since " in done.err and str(root) not in done.err
    finally:
        go.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err


@slow
def test_a_schema_version_of_the_wrong_type_is_a_bad_value_not_missing(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("init").returncode == 0
    config = root / "memos.toml"
    config.write_text(config.read_text().replace("schema_version = 3", 'schema_version = "3"'))
    done = cli("list")
    assert done.returncode == 5
    assert_clean_failure(done, match="bad [store] schema_version '3': use a whole number")
    assert "missing" not in done.err
    config.write_text(config.read_text().replace('schema_version = "3"\n', ""))
    assert_clean_failure(cli("list"), match="schema_version is missing")


@slow
def test_config_set_takes_a_negative_number_and_checks_it(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("init").returncode == 0
    before = head(root)
    for key in ("lock.timeout", "recall.k"):
        done = cli("config", "set", key, "-1")
        assert done.returncode == 2, done.err
        assert_clean_failure(done, root, before, match=f"bad {key} -1: use a")
    done = cli("config", "set", "consolidate.duplicates.similarity", "-0.5")
    assert_clean_failure(done, root, before, match="bad consolidate.duplicates.similarity -0.5")
    done = cli("config", "set", "lock.timeout", "0", "--json")  # 0 is meaningful: do not wait
    assert done.returncode == 0 and json.loads(done.out)["value"] == 0, done.err


@slow
def test_recall_batch_and_import_name_the_first_bad_line(cli: Runner, tmp_path: Path) -> None:
    assert cli("add", "a memory").returncode == 0
    bad_shape_then_bad_json = '{"query": "fine"}\n{"query": ""}\n{not json\n'
    assert_clean_failure(cli("recall", "--batch", "-", input=bad_shape_then_bad_json), match="line 2: expected")
    assert_clean_failure(cli("recall", "--batch", "-", input='{"query": "a"}\n{nope\n{"query": 3}\n'),
                         match="line 2: not valid JSON")
    assert_clean_failure(cli("import", "-", input='{"text": "a"}\n{"text": "b", "cube": "no cube"}\n{nope\n'),
                         match="line 2: bad cube")


@slow
def test_json_lines_end_at_newline_only(cli: Runner) -> None:
    text = "one\u2028two\u2029three\x85four"  # all legal, unescaped, inside a JSON string
    done = cli("import", "-", "--json", input=json.dumps({"text": text}, ensure_ascii=False) + "\n")
    assert done.returncode == 0, done.err
    (uid,) = json.loads(done.out)["ids"]
    assert json.loads(cli("show", uid, "--json").out)["text"] == text


def test_tags_are_short_and_plain() -> None:
    assert check_tags([" a ", "a", "x" * 100, "ünï 护照"]) == ["a", "x" * 100, "ünï 护照"]
    for bad in ("x" * 101, "a,b", "a\nb", "a\x1bb", "a\x85b", "a\u2028b", "a\tb"):
        with pytest.raises(UsageError, match="bad tag"):
            check_tags([bad])
    assert check_tags(["a,b"], strict=False) == ["a,b"]  # unit files written before still read


@slow
def test_bad_tags_are_refused_by_add_import_and_edit(cli: Runner, tmp_path: Path) -> None:
    root = tmp_path / "store"
    uid = cli("add", "a memory", "--tag", "x" * 100).out.strip()
    assert len(uid) == 14
    before = head(root)
    for tag in ("x" * 101, "a,b", "a\nb"):
        assert_clean_failure(cli("add", "x", "--tag", tag), root, before, match="bad tag")
        assert_clean_failure(cli("edit", uid, "--tag", tag), root, before, match="bad tag")
    long = json.dumps({"text": "a", "tags": ["x" * 100_000]})
    assert_clean_failure(cli("import", "-", input=long + "\n"), root, before, match="line 1: bad tag")
    assert_clean_failure(cli("import", "-", input='{"text": "a", "tags": ["a,b"]}\n'), root, before,
                         match="line 1: bad tag")


@pytest.mark.skipif(os.name != "posix", reason="POSIX only")
def test_parse_time_reads_a_bare_date_as_the_local_day() -> None:
    local_midnight = datetime(2023, 3, 14).astimezone()
    assert parse_time("2023-03-14") == local_midnight.astimezone(UTC)
    assert parse_time("2023-03-14").astimezone().strftime("%Y-%m-%d %H:%M") == "2023-03-14 00:00"
