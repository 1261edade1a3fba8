"""Other tools' exports, read into memos's import records.

Each reader yields ``(where, record)`` pairs for ``MemoryStore.import_records``: ``where`` names
the entry for error messages, and ``record`` holds only keys ``build_unit`` takes (text, time,
kind, tags, meta, sources, user). A bad input is a ``UsageError`` of one line that names the
format expected and the file, entry or line.

The formats, and where each is documented:

- ``chatgpt``: ChatGPT's data export (Settings > Data controls > Export), its
  ``conversations.json``: a list of conversations, each a tree of messages in ``mapping``
  (node id -> {message, parent, children}) with ``current_node`` the leaf of the branch shown;
  regenerated answers and edited prompts are other branches. OpenAI does not document it; the
  fixtures are real exports from open-source parsers' test suites (tests/data/foreign/SOURCES.md).
- ``claude``: Claude's data export (Settings > Privacy > Export data), its ``conversations.json``:
  a list of conversations with ``chat_messages`` (sender ``human``/``assistant``, ``content``
  blocks of type ``text``, ``thinking``, ``tool_use``, ``tool_result``...). Undocumented too;
  the shape is the one parsers of it (and the JSON schema in brandtcormorant/claude-json-schema)
  describe.
- ``mem0``: Mem0's ``get_all``/``search`` output, as its docs show it (mem0ai/mem0, docs/): an
  object ``{"results": [...]}`` (the platform wraps it in ``count``/``next``/``previous``, and
  its v1.1 output nests a second ``results``), or the bare list of the OSS v1.0 output; each
  memory has ``id``, ``memory``, ``hash``, ``metadata``, ``categories``, ``created_at``,
  ``updated_at`` and its scope (``user_id``, ``agent_id``, ``run_id``...). Mem0's "memory export"
  is another thing (memories condensed into a schema the caller gives), not read here.
- ``letta``: Letta agent files (``.af``), as letta-ai/agent-file ships them: the current schema
  (``AgentFileSchema`` in letta-ai/letta, letta/schemas/agent_file.py: ``agents``, ``blocks``,
  ``groups``, ``tools``, ``files``...) and the first one (one agent, its blocks in
  ``core_memory``). Memory blocks become notes; the agents' messages become episodes. Archival
  memory (passages) is not in agent files.
- ``markdown``: notes with YAML front matter: basic-memory (basicmachines-co/basic-memory,
  NOTE-FORMAT.md), Obsidian (its help vault, "Properties"), and any other notes app.

Conversations become ``episode`` units, one per visible user or assistant message, the text
starting with the speaker. memos groups the turns of a conversation by (cube, time), so every
turn of one conversation gets the same ``time``, the conversation's start; each message's own
time is in ``meta["message_time"]``. The turns are yielded in conversation order.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from memos_cli.errors import UsageError
from memos_cli.plaintext.units import MAX_TEXT_BYTES, NotJSONError, loads_strict

FORMATS: tuple[str, ...] = ("mem0", "letta", "markdown", "chatgpt", "claude")

Record = dict[str, Any]
Entry = tuple[str, Record]

_EXPECTED = {
    "mem0": 'a Mem0 export (get_all or search output: {"results": [...]} or a list of memories)',
    "letta": "a Letta agent file (.af)",
    "markdown": "Markdown notes (.md files)",
    "chatgpt": 'a ChatGPT export (conversations.json: a list of conversations with "mapping")',
    "claude": 'a Claude export (conversations.json: a list of conversations with "chat_messages")',
}
_LETTA_AGENT_KEYS = ("memory_blocks", "block_ids", "messages", "llm_config", "agent_type")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # memos's user names (units.check_name)
# ChatGPT marks cited spans with private-use characters: U+E200 "cite" U+E202 "turn0search0" U+E201
# around a citation, U+E203 ... U+E204 around the text it grounds. They are markup, not text.
_CITATION_RE = re.compile("\ue200[^\ue201]*\ue201")
_MARKUP_RE = re.compile("[\ue200-\ue20f]")
_MISSING = (None, "", "None", "null")  # Mem0's older docs print Python's None as a string
_SLEEPTIME_AGENTS = ("sleeptime_agent", "voice_sleeptime_agent")


# -- detect ---------------------------------------------------------------------------------------

def detect(path: Path) -> str | None:
    """Which of ``FORMATS`` ``path`` (a file or folder) holds, from its content; None when none fits.

    A folder is ``markdown`` when it holds .md notes (not when every one is memos's own export), or
    ``chatgpt``/``claude`` when it is an unpacked export with a ``conversations.json``.
    """
    path = Path(path)
    if path.is_dir():
        inner = path / "conversations.json"
        if inner.is_file() and (found := _detect_json(inner)) in ("chatgpt", "claude"):
            return found
        return "markdown" if _holds_notes(path) else None
    if not path.is_file():
        return None
    if path.suffix.lower() == ".md":
        return None if _is_memos_export(path) else "markdown"
    return _detect_json(path)


def _detect_json(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            if not head[:1] or head[:1] not in b'{["':
                return None  # not JSON: spare reading the whole file
        data = loads_strict(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None
    return _shape(data)


def _shape(data: Any) -> str | None:
    if isinstance(data, str):  # a JSON string holding the JSON: how some of Letta's example .af files are
        try:
            data = loads_strict(data)
        except ValueError:
            return None
        return "letta" if _is_letta(data) else None
    if isinstance(data, list):
        first = next((item for item in data if isinstance(item, dict)), None)
        if first is None:
            return None
        if "mapping" in first:
            return "chatgpt"
        if "chat_messages" in first:
            return "claude"
        return "mem0" if "memory" in first else None
    if not isinstance(data, dict):
        return None
    if "mapping" in data:
        return "chatgpt"
    if "chat_messages" in data:
        return "claude"
    if _is_letta(data):
        return "letta"
    return "mem0" if _mem0_items(data) is not None else None


def _is_letta(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    agents = data.get("agents")
    if isinstance(agents, list):
        return any(isinstance(a, dict) and any(k in a for k in _LETTA_AGENT_KEYS) for a in agents)
    return isinstance(data.get("core_memory"), list) or (
        "agent_type" in data and isinstance(data.get("memory"), dict) and isinstance(data["memory"].get("blocks"), list))


def _note_files(folder: Path) -> list[Path]:
    """The .md files under ``folder``, sorted, leaving out hidden folders (.obsidian, .trash, .git)."""
    found = []
    for path in folder.rglob("*.md"):
        rel = path.relative_to(folder)
        if not any(part.startswith(".") for part in rel.parts) and path.is_file():
            found.append((rel.as_posix(), path))
    return [path for _, path in sorted(found)]


def _holds_notes(folder: Path) -> bool:
    return any(not _is_memos_export(path) for path in _note_files(folder))


_FENCE_RE = re.compile(r"^-{3,}[ \t]*$", re.MULTILINE)
_EXPORT_KEY_RE = re.compile(r"^memos_export[ \t]*:", re.MULTILINE)


def _is_memos_export(path: Path) -> bool:
    """Is this note one of memos's own export (``memos_export`` in its front matter)? Reads its head only."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024).decode("utf-8-sig", errors="replace")
    except OSError:
        return False
    head = head.lstrip()
    if not head.startswith("---"):
        return False
    fences = list(_FENCE_RE.finditer(head))
    if len(fences) < 2:
        return False
    return bool(_EXPORT_KEY_RE.search(head, fences[0].end(), fences[1].start()))


# -- read -----------------------------------------------------------------------------------------

def read(path: Path, fmt: str) -> Iterator[Entry]:
    """Yield ``(where, record)`` for each memory in ``path`` read as ``fmt`` (one of ``FORMATS``).

    Raises ``UsageError`` (one line, naming the format and the entry) for input that is
    unreadable or not that format. For ``chatgpt`` and ``claude``, ``path`` may also be the
    unpacked export folder that holds ``conversations.json``.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "markdown":
        yield from _read_markdown(path)
        return
    if path.is_dir():
        inner = path / "conversations.json"
        if fmt not in ("chatgpt", "claude") or not inner.is_file():
            raise UsageError(f"{path}: is a folder; expected {_EXPECTED[fmt]}")
        path = inner
    data = _load_json(path, fmt)
    readers = {"mem0": _read_mem0, "letta": _read_letta, "chatgpt": _read_chatgpt, "claude": _read_claude}
    yield from readers[fmt](path.name, data)


def _load_json(path: Path, fmt: str) -> Any:
    name = path.name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; expected {_EXPECTED[fmt]}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (byte {exc.start}); expected {_EXPECTED[fmt]}") from None
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}); "
                         f"expected {_EXPECTED[fmt]}") from None
    except NotJSONError as exc:
        raise UsageError(f"{name}: {exc}; expected {_EXPECTED[fmt]}") from None


# -- times ----------------------------------------------------------------------------------------

def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_epoch(value: Any) -> str | None:
    """Seconds since the epoch (ChatGPT's times) as ISO 8601 in UTC; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    try:
        return _iso(datetime.fromtimestamp(value, UTC))
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: Any) -> str | None:
    """An ISO 8601 string as ISO 8601 in UTC; one without a zone is taken as UTC (Letta and Claude
    write UTC). None for anything else."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return _iso(dt if dt.tzinfo else dt.replace(tzinfo=UTC))


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _episode(role: str, text: str, tool: str, meta: dict[str, Any], source: dict[str, Any]) -> Record:
    """One turn; its time is set by ``_one_time``."""
    return {"text": f"{role}: {text}", "kind": "episode", "tags": [tool], "meta": _drop_none(meta),
            "sources": [_drop_none(source)]}


def _one_time(records: list[Entry], start: str | None) -> Iterator[Entry]:
    """The turns of one conversation, all at its start (else its first message's time)."""
    if start is None:
        times = [rec["meta"]["message_time"] for _, rec in records if rec["meta"].get("message_time")]
        start = min(times, key=datetime.fromisoformat, default=None)
    for where, rec in records:
        if start:
            rec["time"] = start
        else:
            rec.pop("time", None)
        yield where, rec


# -- ChatGPT --------------------------------------------------------------------------------------

def _read_chatgpt(name: str, data: Any) -> Iterator[Entry]:
    if isinstance(data, dict) and "mapping" in data:
        data = [data]  # one conversation (as some tools save one)
    if not isinstance(data, list):
        raise UsageError(f"{name}: expected {_EXPECTED['chatgpt']}")
    for i, conv in enumerate(data, 1):
        where = f"{name}: conversation {i}"
        if not isinstance(conv, dict) or not isinstance(conv.get("mapping"), dict):
            raise UsageError(f'{where}: expected a ChatGPT conversation (an object with "mapping")')
        conv_id = conv.get("conversation_id") or conv.get("id")
        title = conv.get("title") if isinstance(conv.get("title"), str) else None
        turns: list[Entry] = []
        for k, msg in enumerate(_chatgpt_branch(conv["mapping"], conv.get("current_node"), where), 1):
            at = f"{where}, message {k}"
            if not isinstance(msg, dict) or not isinstance(msg.get("author"), dict) or not isinstance(msg.get("content"), dict):
                raise UsageError(f'{at}: expected a ChatGPT message (an object with "author" and "content")')
            role = msg["author"].get("role")
            metadata = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}
            if role not in ("user", "assistant") or metadata.get("is_visually_hidden_from_conversation"):
                continue
            if msg.get("recipient") not in (None, "all"):
                continue  # the assistant calling a tool (recipient "web", "python"...), not speaking
            text = _chatgpt_text(msg["content"])
            if not text:
                continue
            meta = {"source": "chatgpt", "conversation": conv_id, "title": title, "role": role,
                    "message_time": _from_epoch(msg.get("create_time")), "message_id": msg.get("id"),
                    "model": metadata.get("model_slug")}
            source = {"tool": "chatgpt", "conversation": conv_id, "message": msg.get("id")}
            turns.append((at, _episode(role, text, "chatgpt", meta, source)))
        yield from _one_time(turns, _from_epoch(conv.get("create_time")))


def _chatgpt_branch(mapping: dict[str, Any], current: Any, where: str) -> list[Any]:
    """The messages of the branch shown: from ``current_node`` back through ``parent`` to the root."""
    for node_id, node in mapping.items():
        if not isinstance(node, dict):
            raise UsageError(f'{where}: mapping node {node_id!r}: expected an object with "message" and "parent"')
    path: list[dict[str, Any]] = []
    seen: set[str] = set()
    if isinstance(current, str) and current in mapping:
        node_id: Any = current
        while isinstance(node_id, str) and node_id in mapping:
            if node_id in seen:
                raise UsageError(f"{where}: the messages' parent links loop (at node {node_id!r})")
            seen.add(node_id)
            path.append(mapping[node_id])
            node_id = mapping[node_id].get("parent")
        path.reverse()
    else:  # no current_node: from the root, the newest child at each step
        node_id = next((k for k, n in mapping.items() if not isinstance(n.get("parent"), str) or n["parent"] not in mapping),
                       None)
        while isinstance(node_id, str) and node_id in mapping and node_id not in seen:
            seen.add(node_id)
            path.append(mapping[node_id])
            children = mapping[node_id].get("children") or []
            node_id = children[-1] if isinstance(children, list) and children else None
    return [node["message"] for node in path if node.get("message") is not None]


def _chatgpt_text(content: dict[str, Any]) -> str:
    """The text of a message: its string parts (images and other attachments left out)."""
    if content.get("content_type") not in ("text", "multimodal_text"):
        return ""  # code, tool output, reasoning ("thoughts"), hidden user context...
    parts = []
    for part in content.get("parts") or []:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("content_type") == "audio_transcription" and isinstance(part.get("text"), str):
            parts.append(part["text"])  # what was said in a voice conversation
    text = "\n".join(p for p in parts if p.strip())
    return _MARKUP_RE.sub("", _CITATION_RE.sub("", text)).strip()


# -- Claude ---------------------------------------------------------------------------------------

def _read_claude(name: str, data: Any) -> Iterator[Entry]:
    if isinstance(data, dict) and "chat_messages" in data:
        data = [data]
    if not isinstance(data, list):
        raise UsageError(f"{name}: expected {_EXPECTED['claude']}")
    for i, conv in enumerate(data, 1):
        where = f"{name}: conversation {i}"
        if not isinstance(conv, dict) or not isinstance(conv.get("chat_messages"), list):
            raise UsageError(f'{where}: expected a Claude conversation (an object with "chat_messages")')
        conv_id = conv.get("uuid")
        title = conv.get("name") if isinstance(conv.get("name"), str) and conv.get("name") else None
        turns: list[Entry] = []
        for k, msg in _claude_branch(conv["chat_messages"], conv.get("current_leaf_message_uuid"), where):
            at = f"{where}, message {k}"
            role = {"human": "user", "user": "user", "assistant": "assistant"}.get(msg.get("sender"))
            if role is None:
                continue
            text = _claude_text(msg)
            if not text:
                continue  # a turn of tool results, or thinking only
            meta = {"source": "claude", "conversation": conv_id, "title": title, "role": role,
                    "message_time": _from_iso(msg.get("created_at")), "message_id": msg.get("uuid"),
                    "attachments": _claude_files(msg) or None}
            source = {"tool": "claude", "conversation": conv_id, "message": msg.get("uuid")}
            turns.append((at, _episode(role, text, "claude", meta, source)))
        yield from _one_time(turns, _from_iso(conv.get("created_at")))


def _claude_branch(messages: list[Any], leaf: Any, where: str) -> list[tuple[int, dict[str, Any]]]:
    """(number, message) of the branch shown. The export lists every message; when edits or retries
    made branches (``parent_message_uuid``), the branch is the one ending at the conversation's
    ``current_leaf_message_uuid``, else at its last message."""
    numbered = []
    for k, msg in enumerate(messages, 1):
        if not isinstance(msg, dict):
            raise UsageError(f'{where}, message {k}: expected a Claude message (an object with "sender" and "content")')
        numbered.append((k, msg))
    by_id = {msg["uuid"]: (k, msg) for k, msg in numbered if isinstance(msg.get("uuid"), str)}
    parents = [msg.get("parent_message_uuid") for _, msg in numbered]
    linked = [p for p in parents if isinstance(p, str) and p in by_id]
    if len(linked) == len(set(linked)):
        return numbered  # no message has two children: one line, in the export's order
    node = by_id.get(leaf) if isinstance(leaf, str) else None
    node = node or numbered[-1]
    path: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()
    while node is not None and node[0] not in seen:
        seen.add(node[0])
        path.append(node)
        parent = node[1].get("parent_message_uuid")
        node = by_id.get(parent) if isinstance(parent, str) else None
    return path[::-1]


def _claude_text(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    if isinstance(content, list) and content:
        parts = [b["text"].strip() for b in content
                 if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
        return "\n\n".join(p for p in parts if p)
    text = msg.get("text")
    return text.strip() if isinstance(text, str) else ""


def _claude_files(msg: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for item in [*_list(msg.get("attachments")), *_list(msg.get("files"))]:
        fname = item.get("file_name") if isinstance(item, dict) else item
        if isinstance(fname, str) and fname and fname not in names:
            names.append(fname)
    return names


# -- Mem0 -----------------------------------------------------------------------------------------

def _mem0_items(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    results = data.get("results")
    if isinstance(results, dict):  # the platform's v1.1 output: {"count", "next", ..., "results": {"results": [...]}}
        results = results.get("results")
    if not isinstance(results, list):
        return None
    return results if all(isinstance(r, dict) and "memory" in r for r in results[:1]) else None


def _read_mem0(name: str, data: Any) -> Iterator[Entry]:
    items = _mem0_items(data)
    if items is None:
        raise UsageError(f"{name}: expected {_EXPECTED['mem0']}")
    for i, item in enumerate(items, 1):
        where = f"{name}: memory {i}"
        if not isinstance(item, dict) or not isinstance(item.get("memory"), str):
            raise UsageError(f'{where}: expected a Mem0 memory (an object with "memory", a string)')
        text = item["memory"].strip()
        if not text:
            continue
        created = _mem0_time(item.get("created_at"), where, "created_at")
        metadata = item.get("metadata")
        meta = {"source": "mem0", "mem0_id": item.get("id"), "hash": item.get("hash")}
        for key in ("user_id", "agent_id", "app_id", "run_id", "actor_id", "role", "expiration_date"):
            if item.get(key) not in _MISSING:
                meta[key] = item[key]
        if item.get("updated_at") not in _MISSING:
            meta["updated_at"] = _from_iso(item["updated_at"]) or item["updated_at"]
        if isinstance(metadata, dict) and metadata:
            meta["metadata"] = metadata
        categories = item.get("categories") if isinstance(item.get("categories"), list) else []
        tags = ["mem0", *(c for c in categories if isinstance(c, str) and c.strip())]
        rec: Record = {"text": text, "kind": "fact", "tags": tags, "meta": _drop_none(meta),
                       "sources": [_drop_none({"tool": "mem0", "id": item.get("id")})]}
        if created:
            rec["time"] = created
        user = item.get("user_id")
        if isinstance(user, str) and _NAME_RE.fullmatch(user):
            rec["user"] = user  # whose memory it is, in Mem0 as in memos
        yield where, rec


def _mem0_time(value: Any, where: str, key: str) -> str | None:
    if value in _MISSING:
        return None
    found = _from_iso(value)
    if found is None:
        raise UsageError(f"{where}: bad {key} {value!r}: expected an ISO 8601 time (a Mem0 memory)")
    return found


# -- Letta ----------------------------------------------------------------------------------------

def _read_letta(name: str, data: Any) -> Iterator[Entry]:
    if isinstance(data, str):  # the agent file as a JSON string (so are some of letta-ai/agent-file's)
        try:
            data = loads_strict(data)
        except ValueError:
            data = None
    if not _is_letta(data):
        raise UsageError(f'{name}: expected {_EXPECTED["letta"]}: an object with "agents" and "blocks", '
                         'or one agent with "core_memory"')
    if isinstance(data.get("agents"), list):
        yield from _letta_file(name, data)
    else:
        yield from _letta_legacy(name, data)


def _letta_file(name: str, data: dict[str, Any]) -> Iterator[Entry]:
    """The current schema: blocks at the top, shared by the agents that list them in ``block_ids``."""
    exported = _from_iso(data.get("created_at"))
    agents = data["agents"]
    users: dict[str, list[dict[str, Any]]] = {}
    for j, agent in enumerate(agents, 1):
        if not isinstance(agent, dict):
            raise UsageError(f"{name}: agent {j}: expected a Letta agent (an object)")
        for block_id in _list(agent.get("block_ids")):
            if isinstance(block_id, str):
                users.setdefault(block_id, []).append(agent)
    blocks = data.get("blocks") or []
    if not isinstance(blocks, list):
        raise UsageError(f'{name}: "blocks": expected a list of Letta memory blocks')
    for j, block in enumerate(blocks, 1):
        where = f"{name}: block {j}"
        block_id = block.get("id") if isinstance(block, dict) else None
        rec = _block_record(block, users.get(block_id, []) if isinstance(block_id, str) else [], exported, where)
        if rec:
            yield f"{where} ({rec['meta']['block_label']})", rec
    for j, agent in enumerate(agents, 1):
        for k, block in enumerate(_list(agent.get("memory_blocks")), 1):  # blocks given inline, at creation
            where = f"{name}: agent {j}, memory block {k}"
            rec = _block_record(block, [agent], exported, where)
            if rec:
                yield f"{where} ({rec['meta']['block_label']})", rec
        messages = agent.get("messages") or []
        first = min((t for m in _list(messages) if isinstance(m, dict) and (t := _from_iso(m.get("created_at")))),
                    default=None)
        yield from _letta_messages(f"{name}: agent {j}, ", agent, messages, first)


def _letta_legacy(name: str, agent: dict[str, Any]) -> Iterator[Entry]:
    """The first schema: one agent, its blocks in ``core_memory`` (or ``memory.blocks``)."""
    blocks = agent.get("core_memory")
    if not isinstance(blocks, list):
        blocks = agent["memory"]["blocks"]
    for j, block in enumerate(blocks, 1):
        where = f"{name}: block {j}"
        rec = _block_record(block, [agent], None, where)
        if rec:
            yield f"{where} ({rec['meta']['block_label']})", rec
    yield from _letta_messages(f"{name}: ", agent, agent.get("messages") or [], _from_iso(agent.get("created_at")))


def _block_record(block: Any, agents: list[dict[str, Any]], exported: str | None, where: str) -> Record | None:
    if not isinstance(block, dict) or not isinstance(block.get("value"), str):
        raise UsageError(f'{where}: expected a Letta memory block (an object with "label" and "value")')
    text = block["value"].strip()
    if not text:
        return None  # an empty block (a scratchpad not yet written)
    label = block.get("label") if isinstance(block.get("label"), str) and block.get("label") else "block"
    meta: dict[str, Any] = {"source": "letta", "block_label": label, "block_id": block.get("id"),
                            "description": block.get("description") or None}
    names = [a.get("name") for a in agents]
    if len(agents) == 1:
        meta.update(agent=names[0], agent_id=agents[0].get("id"))
    elif agents:
        meta["agents"] = [_drop_none({"name": a.get("name"), "id": a.get("id")}) for a in agents]
    # A block's time: when it last changed (the first schema has it), else when the file was exported.
    when = _from_iso(block.get("updated_at")) or _from_iso(block.get("created_at")) or exported
    source = {"tool": "letta", "agent": names[0] if len(names) == 1 else None, "block": label}
    rec: Record = {"text": text, "kind": "fact" if label == "human" else "note", "tags": ["letta", label],
                   "meta": _drop_none(meta), "sources": [_drop_none(source)]}
    if when:
        rec["time"] = when
    return rec


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _letta_messages(prefix: str, agent: dict[str, Any], messages: Any, start: str | None) -> Iterator[Entry]:
    """The agent's conversation as episodes: what the user said and what the agent said to them.
    ``prefix`` starts each ``where`` ("agent.af: agent 2, ")."""
    if not isinstance(messages, list):
        raise UsageError(f'{prefix}"messages": expected a list of Letta messages')
    agent_type = agent.get("agent_type")
    if agent_type in _SLEEPTIME_AGENTS:
        return  # a background memory agent: its "user" turns are transcripts the system hands it
    text_is_reply = agent_type == "letta_v1_agent"  # as Letta shows it: elsewhere text is inner monologue
    turns: list[Entry] = []
    for k, msg in enumerate(messages, 1):
        at = f"{prefix}message {k}"
        if not isinstance(msg, dict):
            raise UsageError(f'{at}: expected a Letta message (an object with "role" and "content")')
        role = msg.get("role")
        if role == "user":
            text = _letta_user_text(msg)
        elif role == "assistant":
            text = _letta_reply(msg, text_is_reply)
        else:
            continue  # system, tool, approval and summary messages
        if not text:
            continue
        meta = {"source": "letta", "agent": agent.get("name"), "agent_id": agent.get("id"), "role": role,
                "message_time": _from_iso(msg.get("created_at")), "message_id": msg.get("id")}
        source = {"tool": "letta", "agent": agent.get("name"), "message": msg.get("id")}
        turns.append((at, _episode(role, text, "letta", meta, source)))
    yield from _one_time(turns, start)


def _letta_texts(msg: dict[str, Any]) -> list[str]:
    content = msg.get("content")
    if isinstance(content, str):
        return [content]
    if content is None and isinstance(msg.get("text"), str):  # before content parts, a message had "text"
        return [msg["text"]]
    parts = content if isinstance(content, list) else []
    return [p["text"] for p in parts if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)]


def _letta_user_text(msg: dict[str, Any]) -> str:
    """A user turn. Letta packs what the user typed in JSON ({"type": "user_message", "message": ...});
    other packets (login, heartbeat, system_alert) are the system's, not the user's."""
    text = "\n".join(_letta_texts(msg)).strip()
    try:
        packet = json.loads(text)
    except ValueError:
        return text
    if not isinstance(packet, dict) or "type" not in packet:
        return text
    message = packet.get("message")
    return message.strip() if packet.get("type") == "user_message" and isinstance(message, str) else ""


def _letta_reply(msg: dict[str, Any], text_is_reply: bool) -> str:
    """What the agent said: its ``send_message`` calls, and its text where that is the reply."""
    parts = [t.strip() for t in _letta_texts(msg)] if text_is_reply else []
    for call in _list(msg.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or function.get("name") != "send_message":
            continue
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            continue
        if isinstance(args, dict) and isinstance(args.get("message"), str):
            parts.append(args["message"].strip())
    return "\n\n".join(p for p in parts if p)


# -- Markdown notes -------------------------------------------------------------------------------

def _read_markdown(path: Path) -> Iterator[Entry]:
    if path.is_dir():
        root, notes = path, _note_files(path)
    elif path.is_file():
        if path.suffix.lower() != ".md":
            raise UsageError(f"{path.name}: not a .md file; expected {_EXPECTED['markdown']}")
        root, notes = path.parent, [path]
    else:
        raise UsageError(f"{path}: no such file or folder; expected {_EXPECTED['markdown']}")
    for note in notes:
        rel = note.relative_to(root).as_posix()
        rec = _note(note, rel)
        if rec is not None:
            yield rel, rec


def _note(path: Path, rel: str) -> Record | None:
    import frontmatter
    import yaml

    try:
        stat = path.stat()
        if stat.st_size > MAX_TEXT_BYTES:
            raise UsageError(f"{rel}: over {MAX_TEXT_BYTES // 1024} KiB, more text than a memory holds; "
                             "split the note")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UsageError(f"{rel}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{rel}: not UTF-8 text (byte {exc.start}); expected a Markdown note") from None
    try:
        fields, body = frontmatter.parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""  # the YAML starts after the first fence
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{rel}: {line}bad YAML front matter ({problem}); expected a Markdown note") from None
    except ValueError as exc:  # a date YAML cannot hold (2024-13-01), bad TOML (+++) or JSON front matter
        raise UsageError(f"{rel}: bad front matter ({exc}); expected a Markdown note") from None
    fields = {str(k): v for k, v in fields.items()}
    title = fields.get("title")
    title = title.strip() if isinstance(title, str) and title.strip() else None
    body = body.strip()
    if title and not _starts_with(body, title):
        body = f"{title}\n\n{body}" if body else title
    if not body:
        return None  # no title and no text: nothing to remember
    tags = _note_tags(fields.pop("tags", None)) + _note_tags(fields.pop("tag", None))  # "tag": Obsidian's old name
    when = None
    for key in ("created", "date", "created_at"):
        if key in fields and (when := _note_time(fields[key])):
            del fields[key]
            break
    if when is None:
        when = _iso(datetime.fromtimestamp(stat.st_mtime, UTC))
    meta: dict[str, Any] = {}
    for key, value in fields.items():
        ok, value = _jsonable(value)
        if ok:
            meta[f"fm_{key}" if key in ("source", "path") else key] = value  # these two are provenance below
    meta.update(source="markdown", path=rel)
    rec: Record = {"text": body, "time": when, "kind": "note", "meta": meta, "sources": [{"file": rel}]}
    if tags:
        rec["tags"] = list(dict.fromkeys(tags))
    return rec


def _starts_with(body: str, title: str) -> bool:
    """Does the body open with the title (as text, or as its first heading)?"""
    first = body.split("\n", 1)[0].lstrip("#").strip()
    return first.casefold() == title.casefold() or body.startswith(title)


def _note_tags(value: Any) -> list[str]:
    """Front-matter tags: a list, or a string of tags separated by commas or spaces."""
    if value is None:
        return []
    items: Iterable[Any] = value if isinstance(value, list) else re.split(r"[,\s]+", str(value))
    tags = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            continue
        for tag in str(item).split(","):
            tag = tag.strip().lstrip("#").strip()
            if tag:
                tags.append(tag)
    return tags


def _note_time(value: Any) -> str | None:
    """A front-matter date or time; one without a zone is local time (as basic-memory and Obsidian
    take it). None when it is not one."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, datetime):
        return _iso(value if value.tzinfo else value.astimezone())
    if isinstance(value, date):
        return _iso(datetime.combine(value, time()).astimezone())
    return None


def _jsonable(value: Any) -> tuple[bool, Any]:
    """``value`` as plain JSON (dates as ISO 8601 strings), and whether it could be made so."""
    if value is None or isinstance(value, (str, bool, int)):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, (datetime, date, time)):
        return True, value.isoformat()
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(value, dict):
        pairs = {str(k): _jsonable(v) for k, v in value.items()}
        return all(ok for ok, _ in pairs.values()), {k: v for k, (_, v) in pairs.items()}
    return False, None
