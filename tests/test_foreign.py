"""Reading other tools' exports (memos_cli.portable.foreign): real fixtures, a real store, nothing mocked.

The fixtures are trimmed copies of the real formats; tests/data/foreign/SOURCES.md says where each
comes from.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from memos_cli.errors import UsageError
from memos_cli.plaintext.retrieval import Filters
from memos_cli.plaintext.units import MAX_TEXT_BYTES, parse_time
from memos_cli.portable.foreign import FORMATS, detect, read

DATA = Path(__file__).parent / "data" / "foreign"
CHATGPT = DATA / "chatgpt" / "conversations.json"
CLAUDE = DATA / "claude" / "conversations.json"
MEM0 = DATA / "mem0"
LETTA = DATA / "letta"
NOTES = DATA / "markdown"
ALLOWED = {"text", "time", "kind", "tags", "meta", "sources", "user"}


def records(path: Path, fmt: str) -> list[tuple[str, dict]]:
    got = list(read(path, fmt))
    for where, rec in got:  # every record is what import_records takes
        assert isinstance(where, str) and where
        assert set(rec) <= ALLOWED and rec["text"].strip(), (where, rec)
        json.dumps(rec, allow_nan=False)
        if "time" in rec:
            assert parse_time(rec["time"]).tzinfo is not None
    return got


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def error(path: Path, fmt: str) -> str:
    with pytest.raises(UsageError) as info:
        list(read(path, fmt))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_formats_and_unknown_ones():
    assert FORMATS == ("mem0", "letta", "markdown", "chatgpt", "claude")
    with pytest.raises(UsageError, match="unknown format 'evernote'"):
        list(read(CHATGPT, "evernote"))


def test_detect_is_by_content_not_name(tmp_path):
    assert detect(shutil.copy(CHATGPT, tmp_path / "export.txt")) == "chatgpt"
    assert detect(shutil.copy(CLAUDE, tmp_path / "data")) == "claude"
    assert detect(write_json(tmp_path / "conversations.json", [{"memory": "Likes tea", "id": "1"}])) == "mem0"
    (tmp_path / "lines.jsonl").write_text('{"text": "a memos record"}\n{"text": "another"}\n')
    assert detect(tmp_path / "lines.jsonl") is None
    (tmp_path / "notes.txt").write_text("plain text")
    assert detect(tmp_path / "notes.txt") is None
    assert detect(write_json(tmp_path / "empty.json", [])) is None
    assert detect(tmp_path / "missing.json") is None


# -- ChatGPT --------------------------------------------------------------------------------------

PAINTING_START = "2025-06-12T00:23:19.500102Z"  # the conversations' create_time, in UTC
GMAIL_START = "2024-12-05T18:06:29.327302Z"


def test_chatgpt_detect():
    assert detect(CHATGPT) == "chatgpt"
    assert detect(CHATGPT.parent) == "chatgpt"  # the unpacked export folder


def test_chatgpt_read_turns_share_the_conversation_time_in_order():
    got = records(CHATGPT, "chatgpt")
    assert [w for w, _ in got] == [
        "conversations.json: conversation 1, message 3", "conversations.json: conversation 1, message 5",
        *(f"conversations.json: conversation 2, message {k}" for k in (2, 6, 7, 8, 9, 10))]
    recs = [r for _, r in got]
    painting, gmail = recs[:2], recs[2:]
    assert {r["time"] for r in painting} == {PAINTING_START} and {r["time"] for r in gmail} == {GMAIL_START}
    assert [r["meta"]["role"] for r in gmail] == ["user", "assistant"] * 3
    assert all(r["kind"] == "episode" and r["tags"] == ["chatgpt"] for r in recs)
    # The image part of the first message is left out; its text kept.
    assert painting[0]["text"] == "user: Interpret this painting"
    assert painting[1]["text"].startswith("assistant: This painting presents a surreal, symbolic tableau")
    # The answer was created before its (empty) parent: the tree gives the order, not the times.
    assert painting[1]["meta"]["message_time"] == "2025-06-12T00:23:24.489339Z"
    assert gmail[0]["text"].startswith("user: I want to build an app in Java that will help me manage my Gmail.")
    # The web search (an assistant message to a tool) and the tool's answer are not turns; the
    # citation markers around the grounded text are gone.
    assert gmail[1]["text"].startswith("assistant: To enhance your Gmail management capabilities")
    assert not any(ch in r["text"] for r in recs for ch in "\ue203\ue204")
    assert gmail[5]["text"].startswith("assistant: When setting up a **Spring Boot application**")
    assert gmail[1]["meta"] == {
        "source": "chatgpt", "conversation": "6751eba5-2428-8005-ac4d-63619dbfb902",
        "title": "Gmail API Management in Java", "role": "assistant", "message_time": "2024-12-05T18:06:47.751989Z",
        "message_id": "6a557a21-cadc-4871-b8b7-8265d0645042", "model": "gpt-4o"}
    assert gmail[1]["sources"] == [{"tool": "chatgpt", "conversation": "6751eba5-2428-8005-ac4d-63619dbfb902",
                                    "message": "6a557a21-cadc-4871-b8b7-8265d0645042"}]


def test_chatgpt_follows_the_branch_shown(tmp_path):
    """A regenerated answer is a sibling node; the export's current_node says which one is shown."""
    convs = json.loads(CHATGPT.read_text(encoding="utf-8"))
    mapping = convs[1]["mapping"]
    last = mapping[convs[1]["current_node"]]
    regenerated = copy.deepcopy(last)
    regenerated["id"] = regenerated["message"]["id"] = "regenerated-answer"
    regenerated["message"]["content"]["parts"] = ["A regenerated answer about Spring Initializr."]
    mapping["regenerated-answer"] = regenerated
    mapping[last["parent"]]["children"].append("regenerated-answer")

    shown = [r["text"] for _, r in records(write_json(tmp_path / "a.json", convs), "chatgpt")]
    assert len(shown) == 8 and not any("regenerated" in t for t in shown)
    assert shown[-1].startswith("assistant: When setting up")

    convs[1]["current_node"] = "regenerated-answer"
    shown = [r["text"] for _, r in records(write_json(tmp_path / "b.json", convs), "chatgpt")]
    assert len(shown) == 8 and shown[-1] == "assistant: A regenerated answer about Spring Initializr."
    assert not any(t.startswith("assistant: When setting up") for t in shown)


def test_chatgpt_bad_input(tmp_path):
    convs = json.loads(CHATGPT.read_text(encoding="utf-8"))
    del convs[1]["mapping"]
    message = error(write_json(tmp_path / "conversations.json", convs), "chatgpt")
    assert message == 'conversations.json: conversation 2: expected a ChatGPT conversation (an object with "mapping")'
    (tmp_path / "cut.json").write_text(CHATGPT.read_text(encoding="utf-8")[:500])
    message = error(tmp_path / "cut.json", "chatgpt")
    assert message.startswith("cut.json: line ") and " column " in message and "not valid JSON" in message
    assert "ChatGPT export" in message
    assert "ChatGPT export" in error(MEM0 / "get_all_platform.json", "chatgpt")


def test_chatgpt_import_into_a_store(store):
    units = store.import_records(read(CHATGPT, "chatgpt"))
    assert len(units) == 8
    got = [store.get(u.id) for u in units]
    assert [u.id for u in got] == sorted(u.id for u in got)  # ids in conversation order
    assert {u.time for u in got[:2]} == {parse_time(PAINTING_START)}
    assert {u.time for u in got[2:]} == {parse_time(GMAIL_START)}
    assert got[0].kind == "episode" and got[0].tags == ["chatgpt"] and got[0].text == "user: Interpret this painting"
    assert got[0].meta["title"] == "Interpretación pintura surrealista"
    assert len(store.list(Filters(tags=["chatgpt"]), limit=0)) == 8


# -- Claude ---------------------------------------------------------------------------------------

def test_claude_detect():
    assert detect(CLAUDE) == "claude"
    assert detect(CLAUDE.parent) == "claude"


def test_claude_read():
    got = records(CLAUDE, "claude")
    wheres = [w for w, _ in got]
    assert wheres == [
        *(f"conversations.json: conversation 1, message {k}" for k in (1, 2)),
        *(f"conversations.json: conversation 2, message {k}" for k in (1, 2, 3, 4)),
        *(f"conversations.json: conversation 3, message {k}" for k in (1, 2, 4, 6)),  # 3, 5: tool results only
        "conversations.json: conversation 5, message 1",  # conversation 4 has no messages; 5's others are thinking
    ]
    recs = [r for _, r in got]
    assert {r["time"] for r in recs[:2]} == {"2025-10-01T18:42:27.303515Z"}
    assert {r["time"] for r in recs[2:6]} == {"2025-10-05T09:15:42.123456Z"}
    assert {r["time"] for r in recs[6:10]} == {"2025-11-01T09:00:00Z"}
    assert recs[0]["text"].startswith("user: Can you review my binary search implementation?")
    assert recs[1]["text"].startswith("assistant: Your binary search implementation looks solid!")
    assert recs[2]["meta"]["attachments"] == ["slow_query_log.txt"]
    # A turn's text is its text blocks; the tool call beside it is left out.
    assert recs[7]["text"] == "assistant: I'll create a Python script for calculating Fibonacci numbers and save it to a file."
    assert recs[10]["text"] == "assistant: Here is my answer."  # not the thinking before it
    assert recs[1]["meta"] == {
        "source": "claude", "conversation": "5551eb71-ada2-45bd-8f91-0c4945a1e5a6",
        "title": "Python Code Review - Binary Search Implementation", "role": "assistant",
        "message_time": "2025-10-01T18:42:33.904627Z", "message_id": "msg-002-uuid"}
    assert all(r["kind"] == "episode" and r["tags"] == ["claude"] for r in recs)


def test_claude_follows_the_branch_shown(tmp_path):
    """A retried answer is a second child of the same message (parent_message_uuid)."""
    conv = json.loads(CLAUDE.read_text(encoding="utf-8"))[0]
    first, answer = conv["chat_messages"]
    first["parent_message_uuid"] = "00000000-0000-4000-8000-000000000000"
    answer["parent_message_uuid"] = first["uuid"]
    retry = copy.deepcopy(answer)
    retry.update(uuid="msg-003-uuid", text="A retried review.", content=[{"type": "text", "text": "A retried review."}])
    conv["chat_messages"].append(retry)

    texts = [r["text"] for _, r in records(write_json(tmp_path / "a.json", [conv]), "claude")]
    assert len(texts) == 2 and texts[1] == "assistant: A retried review."  # the latest branch
    conv["current_leaf_message_uuid"] = answer["uuid"]
    texts = [r["text"] for _, r in records(write_json(tmp_path / "b.json", [conv]), "claude")]
    assert len(texts) == 2 and texts[1].startswith("assistant: Your binary search implementation looks solid!")


def test_claude_bad_input(tmp_path):
    convs = json.loads(CLAUDE.read_text(encoding="utf-8"))
    convs[2]["chat_messages"] = "gone"
    message = error(write_json(tmp_path / "conversations.json", convs), "claude")
    assert message == 'conversations.json: conversation 3: expected a Claude conversation (an object with "chat_messages")'
    convs[2]["chat_messages"] = [convs[0]["chat_messages"][0], "not a message"]
    message = error(write_json(tmp_path / "conversations.json", convs), "claude")
    assert message.startswith("conversations.json: conversation 3, message 2: expected a Claude message")
    assert "Claude export" in error(CHATGPT.parent / "missing.json", "claude")
    assert "Claude export" in error(MEM0 / "get_all_oss_graph.json", "claude")


def test_claude_import_into_a_store(store):
    conv = json.loads(CLAUDE.read_text(encoding="utf-8"))
    units = store.import_records(read(CLAUDE, "claude"))
    assert len(units) == 11
    got = [store.get(u.id) for u in units[2:6]]
    assert {u.time for u in got} == {parse_time(conv[1]["created_at"])}
    assert [u.text.split(":")[0] for u in got] == ["user", "assistant", "user", "assistant"]
    assert got[0].sources == [{"tool": "claude", "conversation": conv[1]["uuid"], "message": "msg-101-uuid"}]
    assert got[0].meta["message_time"] == "2025-10-05T09:15:43.500000Z"


# -- Mem0 -----------------------------------------------------------------------------------------

def test_mem0_detect():
    for path in sorted(MEM0.glob("*.json")):
        assert detect(path) == "mem0", path


def test_mem0_read_get_all():
    got = records(MEM0 / "get_all_platform.json", "mem0")
    assert [w for w, _ in got] == [f"get_all_platform.json: memory {i}" for i in (1, 2, 3)]
    first, second, _ = (r for _, r in got)
    assert first == {
        "text": "Name is Alex", "kind": "fact", "tags": ["mem0", "personal_details"],
        "time": "2024-11-28T00:53:43.276872Z",  # 16:53:43 at -08:00
        "user": "alex",
        "meta": {"source": "mem0", "mem0_id": "1a75e827-7eca-45ea-8c5c-cfd43299f061",
                 "hash": "d0fccc8fa47f7a149ee95750c37bb0ca", "user_id": "alex",
                 "updated_at": "2024-11-28T00:53:43.276885Z", "metadata": {"food": "vegan"}},
        "sources": [{"tool": "mem0", "id": "1a75e827-7eca-45ea-8c5c-cfd43299f061"}],
    }
    assert second["tags"] == ["mem0", "user_preferences", "food"]


def test_mem0_read_other_shapes():
    nested = [r for _, r in records(MEM0 / "get_all_platform_v1.1.json", "mem0")]  # {"results": {"results": [...]}}
    assert [r["text"] for r in nested][0] == "是素食主义者，对坚果过敏。"
    assert len(nested) == 2 and nested[0]["meta"]["agent_id"] == "travel-assistant" and "user" not in nested[0]
    assert "metadata" not in nested[1]["meta"]  # "None", as Mem0's docs print it
    (bare,) = [r for _, r in records(MEM0 / "get_all_oss_v1.0.json", "mem0")]  # a bare list
    assert bare["text"] == "Likes to play cricket on weekends" and bare["time"] == "2024-07-26T15:44:41.039788Z"
    assert "updated_at" not in bare["meta"] and bare["user"] == "alice"
    (graph,) = [r for _, r in records(MEM0 / "get_all_oss_graph.json", "mem0")]  # "relations" beside "results"
    assert graph["meta"]["metadata"] == {"category": "hobbies"}


def test_mem0_bad_input(tmp_path):
    items = json.loads((MEM0 / "get_all_platform.json").read_text())
    items["results"][1]["created_at"] = "last tuesday"
    message = error(write_json(tmp_path / "memories.json", items), "mem0")
    assert message == "memories.json: memory 2: bad created_at 'last tuesday': expected an ISO 8601 time (a Mem0 memory)"
    items["results"][1] = {"id": "x", "text": "no memory key"}
    message = error(write_json(tmp_path / "memories.json", items), "mem0")
    assert message == 'memories.json: memory 2: expected a Mem0 memory (an object with "memory", a string)'
    message = error(write_json(tmp_path / "other.json", {"memories": []}), "mem0")
    assert message.startswith("other.json: expected a Mem0 export")


def test_mem0_import_into_a_store(store):
    units = store.import_records(read(MEM0 / "get_all_platform.json", "mem0"))
    assert len(units) == 3
    got = store.get(units[2].id)
    assert got.text == "Is allergic to nuts" and got.kind == "fact" and got.tags == ["mem0", "health"]
    assert got.user == "alex" and got.time == parse_time("2024-11-27T16:53:43.337253-08:00")
    assert got.meta["mem0_id"] == "8d74f7a0-6107-4589-bd6f-210f6bf4fbbb"
    assert got.sources == [{"tool": "mem0", "id": "8d74f7a0-6107-4589-bd6f-210f6bf4fbbb"}]
    assert len(store.list(Filters(user="alex"), limit=0)) == 3


# -- Letta ----------------------------------------------------------------------------------------

def test_letta_detect():
    for path in sorted(LETTA.glob("*.af")):
        assert detect(path) == "letta", path  # customer_service.af is JSON encoded twice, as shipped


def test_letta_read_first_schema_blocks_and_conversation():
    got = records(LETTA / "memgpt_agent_with_convo_v1.af", "letta")
    blocks, turns = got[:2], got[2:]
    assert [w for w, _ in blocks] == ["memgpt_agent_with_convo_v1.af: block 1 (persona)",
                                      "memgpt_agent_with_convo_v1.af: block 2 (human)"]
    persona, human = (r for _, r in blocks)
    assert persona["text"].startswith("The following is a starter persona") and "I am BigChungus." in persona["text"]
    assert persona["kind"] == "note" and persona["tags"] == ["letta", "persona"]
    assert human["kind"] == "fact" and "First name: Sam" in human["text"]
    assert human["time"] == "2025-04-01T03:57:37.273860Z"  # the block's updated_at (Letta writes UTC, no zone)
    assert human["meta"] == {"source": "letta", "block_label": "human", "agent": "memgpt_agent"}
    # The visible turns only: no system prompts, tool returns, login or heartbeat packets, inner monologue.
    assert [r["text"] for _, r in turns] == [
        "assistant: More human than human is our motto.",
        "user: hi my name is actually sarah not chad",
        "assistant: Apologies for the confusion, Sarah. It's nice to meet you. How can I assist you today?",
        "user: I want you to stop calling yourself Sam, its not the best name for you",
        "assistant: I see. If you could choose a name for me, what would it be?",
    ]
    assert [w for w, _ in turns] == [f"memgpt_agent_with_convo_v1.af: message {k}" for k in (2, 5, 10, 12, 13)]
    assert {r["time"] for _, r in turns} == {"2025-04-01T03:47:27Z"}  # the agent's creation
    assert all(r["kind"] == "episode" and r["tags"] == ["letta"] for _, r in turns)


def test_letta_read_agent_file_schema():
    got = records(LETTA / "loop.af", "letta")
    assert [w for w, _ in got] == ["loop.af: block 1 (about_user)", "loop.af: block 2 (persona)",
                                   "loop.af: block 3 (preferences)", "loop.af: agent 1, message 2"]
    block, turn = got[1][1], got[3][1]
    assert block["text"].startswith("I'm Loop. I persist.") and block["tags"] == ["letta", "persona"]
    assert block["meta"]["agent"] == "Loop" and block["meta"]["block_id"] == "block-5"
    assert block["time"] == "2026-01-22T02:06:35.101954Z"  # blocks carry no time: the file's export time
    assert turn["text"] == "assistant: I'm Loop. I remember. What's on your mind?"  # its send_message call
    assert turn["time"] == "2026-01-22T02:06:34.048456Z"  # the conversation's first message
    assert turn["meta"]["message_time"] == "2026-01-22T02:06:34.048739Z"

    deep = records(LETTA / "deep_research_agent.af", "letta")  # research_citations, research_plan: empty
    assert [w for w, _ in deep] == ["deep_research_agent.af: block 1 (human)", "deep_research_agent.af: block 2 (persona)"]
    service = records(LETTA / "customer_service.af", "letta")
    assert [r["tags"][1] for _, r in service] == ["human", "persona"]
    assert service[0][1]["text"].startswith("The human is looking for help with a customer support issue.")


def test_letta_shared_blocks_and_sleeptime_agents(tmp_path):
    data = json.loads((LETTA / "loop.af").read_text(encoding="utf-8"))
    helper = copy.deepcopy(data["agents"][0])
    helper.update(id="agent-1", name="Loop-sleeptime", agent_type="sleeptime_agent", block_ids=["block-5"])
    helper["messages"][1]["agent_id"] = "agent-1"
    data["agents"].append(helper)
    got = dict(records(write_json(tmp_path / "group.af", data), "letta"))
    assert got["group.af: block 2 (persona)"]["meta"]["agents"] == [{"name": "Loop", "id": "agent-0"},
                                                                   {"name": "Loop-sleeptime", "id": "agent-1"}]
    assert "group.af: agent 2, message 2" not in got  # a background agent's turns are not a conversation


def test_letta_bad_input(tmp_path):
    data = json.loads((LETTA / "loop.af").read_text(encoding="utf-8"))
    del data["blocks"][1]["value"]
    message = error(write_json(tmp_path / "agent.af", data), "letta")
    assert message == 'agent.af: block 2: expected a Letta memory block (an object with "label" and "value")'
    message = error(CHATGPT, "letta")
    assert message.startswith("conversations.json: expected a Letta agent file (.af)")
    (tmp_path / "cut.af").write_text((LETTA / "loop.af").read_text(encoding="utf-8")[:300])
    assert error(tmp_path / "cut.af", "letta").startswith("cut.af: line ")


def test_letta_import_into_a_store(store):
    units = store.import_records(read(LETTA / "memgpt_agent_with_convo_v1.af", "letta"))
    assert len(units) == 7
    human = store.get(units[1].id)
    assert human.kind == "fact" and human.tags == ["letta", "human"] and "First name: Sam" in human.text
    turns = [store.get(u.id) for u in units[2:]]
    assert {u.time for u in turns} == {parse_time("2025-04-01T03:47:27Z")}
    assert turns[1].text == "user: hi my name is actually sarah not chad"
    assert len(store.list(Filters(kind="episode"), limit=0)) == 5


# -- Markdown notes -------------------------------------------------------------------------------

def local_midnight(day: date) -> str:
    return datetime.combine(day, time()).astimezone().astimezone(UTC).isoformat().replace("+00:00", "Z")


def mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat().replace("+00:00", "Z")


def test_markdown_detect(tmp_path):
    assert detect(NOTES) == "markdown"
    assert detect(NOTES / "basic-memory" / "people" / "ada-lovelace.md") == "markdown"
    export = tmp_path / "export"
    export.mkdir()
    for i in (1, 2):  # memos's own export: every note has memos_export in its front matter
        (export / f"0{i}.md").write_text(f"---\nmemos_export: 1\nid: x{i}\n---\nnote {i}\n")
    assert detect(export) is None and detect(export / "01.md") is None
    (export / "mine.md").write_text("A note of my own.\n")
    assert detect(export) == "markdown"
    assert detect(tmp_path / "empty") is None
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "empty") is None


def test_markdown_read_folder():
    got = dict(records(NOTES, "markdown"))
    assert list(got) == [
        "basic-memory/authentication-system.md", "basic-memory/coffee-brewing-methods.md",
        "basic-memory/empty-note.md", "basic-memory/no-frontmatter.md", "basic-memory/people/ada-lovelace.md",
        "obsidian/A New Hope.md", "obsidian/Properties.md",
    ]
    auth = got["basic-memory/authentication-system.md"]
    assert auth["text"].startswith("# Authentication System\n\n## Context")  # the title already opens the body
    assert auth["time"] == "2025-01-10T14:30:00Z"  # front matter "created"
    assert auth["tags"] == ["security", "auth", "api"] and auth["kind"] == "note"
    assert auth["meta"] == {"title": "Authentication System", "permalink": "authentication-system", "type": "note",
                            "updated": "2025-01-15T09:15:00+00:00", "source": "markdown",
                            "path": "basic-memory/authentication-system.md"}
    assert auth["sources"] == [{"file": "basic-memory/authentication-system.md"}]
    assert got["basic-memory/empty-note.md"]["text"] == "Empty Note"  # front matter only: its title
    hope = got["obsidian/A New Hope.md"]
    assert hope["text"].startswith("A New Hope\n\nOnce you add a property")  # the title put first
    assert hope["time"] == local_midnight(date(2020, 8, 21))  # "date", a day without a zone: local midnight
    assert hope["meta"]["cast"] == ["Mark Hamill", "Harrison Ford", "Carrie Fisher"]
    assert hope["meta"]["year"] == 1977 and hope["meta"]["favorite"] is True and hope["meta"]["time"] == "2020-08-21T10:30:00"
    props = got["obsidian/Properties.md"]
    assert props["text"].startswith("Properties allow you to organize information about a note.")
    assert props["meta"]["aliases"][0] == "front matter" and "tags" not in props
    for rel in ("basic-memory/no-frontmatter.md", "obsidian/Properties.md"):  # no date: the file's own time
        assert got[rel]["time"] == mtime(NOTES / rel)


def test_markdown_tags_times_and_skips(tmp_path):
    vault = tmp_path / "vault"
    (vault / ".obsidian").mkdir(parents=True)
    (vault / ".trash").mkdir()
    (vault / ".trash" / "deleted.md").write_text("A deleted note.\n")
    (vault / ".obsidian" / "workspace.md").write_text("settings\n")
    (vault / "tagged.md").write_text("---\ntags: \"journal, ideas #later\"\nsource: a book\ncreated: 2024-03-01T09:00:00+02:00\n"
                                     "---\nRead it again.\n")
    (vault / "blank.md").write_text("---\ntype: empty\n---\n\n")
    old = datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    (vault / "plain.md").write_text("Just text.\n")
    os.utime(vault / "plain.md", (old, old))
    got = dict(records(vault, "markdown"))
    assert list(got) == ["plain.md", "tagged.md"]  # hidden folders and a note with no text are left out
    assert got["tagged.md"]["tags"] == ["journal", "ideas", "later"]
    assert got["tagged.md"]["time"] == "2024-03-01T07:00:00Z"
    assert got["tagged.md"]["meta"] == {"fm_source": "a book", "source": "markdown", "path": "tagged.md"}
    assert got["plain.md"]["time"] == "2023-01-02T03:04:05Z"
    (one,) = records(vault / "tagged.md", "markdown")  # a single file
    assert one[0] == "tagged.md" and one[1]["text"] == "Read it again."


def test_markdown_bad_input(tmp_path):
    (tmp_path / "bad.md").write_text("---\ntitle: x\ntags: [a, b\n---\nbody\n")
    message = error(tmp_path / "bad.md", "markdown")
    assert message.startswith("bad.md: line 4: bad YAML front matter") and "Markdown note" in message
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "huge.md").write_text("x" * (MAX_TEXT_BYTES + 1))
    assert error(tmp_path / "big", "markdown").startswith("huge.md: over 1024 KiB")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "old.md").write_bytes("caf\xe9\n".encode("latin-1"))
    assert error(tmp_path / "latin", "markdown") == "old.md: not UTF-8 text (byte 3); expected a Markdown note"
    assert "Markdown notes" in error(tmp_path / "nothing-here", "markdown")
    assert error(CHATGPT, "markdown") == "conversations.json: not a .md file; expected Markdown notes (.md files)"
    (tmp_path / "dates").mkdir()
    (tmp_path / "dates" / "day.md").write_text("---\ncreated: 2024-13-01\n---\nA day that is not.\n")
    assert error(tmp_path / "dates", "markdown").startswith("day.md: bad front matter (month must be in 1..12)")


def test_markdown_import_into_a_store(store):
    units = store.import_records(read(NOTES / "basic-memory", "markdown"))
    assert len(units) == 5
    by_path = {store.get(u.id).meta["path"]: store.get(u.id) for u in units}
    ada = by_path["people/ada-lovelace.md"]
    assert ada.text.startswith("# Ada Lovelace") and ada.tags == ["mathematics", "computing", "history"]
    assert ada.kind == "note" and ada.meta["type"] == "Person" and ada.sources == [{"file": "people/ada-lovelace.md"}]
    assert by_path["authentication-system.md"].time == parse_time("2025-01-10T14:30:00Z")
    assert [u.meta["path"] for u in store.list(Filters(tags=["coffee"]), limit=0)] == ["coffee-brewing-methods.md"]
