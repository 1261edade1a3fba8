"""Memory for agents: scoped tokens and the audit log, `memos mcp` with the SDK's own client, `memos serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from memos_cli.agents import access
from memos_cli.agents.access import AccessDenied, Scope
from memos_cli.agents.service import MemoryService, Worker
from memos_cli.errors import NotFoundError, UsageError
from memos_cli.store import check as checking

from .conftest import assert_clean_failure, commit_count, git, head


@pytest.fixture
def worker(store):
    w = Worker(store)
    yield w
    w.stop()


def test_tokens_are_kept_hashed_outside_history_and_can_be_revoked(store, cli):
    store.add("a memory")
    token, secret = access.create(store, "editor", ["work"], write=True)
    assert secret.startswith("memos_") and token.rights == "write"
    kept = (store.state_dir / "tokens.json").read_text()
    assert secret not in kept and token.sha256 in kept
    assert git(store.root, "status", "--porcelain") == ""  # .git/memos: never in history
    assert access.verify(store, secret).name == "editor"
    assert access.verify(store, secret + "x") is None
    with pytest.raises(UsageError, match="exists"):
        access.create(store, "editor", ["work"], write=False)
    access.revoke(store, "editor")
    assert access.verify(store, secret) is None
    with pytest.raises(NotFoundError):
        access.revoke(store, "editor")
    listed = json.loads(cli("token", "list", "--json").out)
    assert listed[0]["name"] == "editor" and listed[0]["revoked_at"] and "sha256" not in listed[0]
    made = cli("token", "create", "reader", "--cube", "home", "--json")
    assert made.returncode == 0 and json.loads(made.out)["rights"] == "read"
    assert_clean_failure(cli("token", "create", "bad name", "--cube", "x"), match="bad token name")


def test_a_scope_reaches_only_its_cubes_in_every_operation(store, worker):
    theirs = store.add("Bob's salary is private", cube="hr")
    mine = store.add("Alice likes tea", cube="home")
    home = MemoryService(store, worker, Scope("home-token", ("home",), True), via="test")
    # recall and list see only the scope's cubes, even when asked for everything.
    assert [r["id"] for r in home.recall("salary Bob tea Alice", 10)] == [mine.id]
    assert [u["id"] for u in home.list()] == [mine.id]
    # Another cube, named: refused. A unit of another cube, by id: not found, for every operation.
    for op in (lambda: home.recall("x", cube="hr"), lambda: home.list(cube="hr"),
               lambda: home.remember("planted", cube="hr"), lambda: home.pinned_block("hr")):
        with pytest.raises(AccessDenied):
            op()
    for op in (lambda: home.show(theirs.id), lambda: home.history(theirs.id), lambda: home.forget([theirs.id]),
               lambda: home.pin([theirs.id]), lambda: home.pin([theirs.id], False)):
        with pytest.raises(NotFoundError):
            op()
    assert store.get(theirs.id).status == "active" and not store.get(theirs.id).pinned
    # A read-only scope reads its cube and writes nothing.
    reader = MemoryService(store, worker, Scope("reader", ("home",), False))
    assert reader.show(mine.id)["id"] == mine.id
    for op in (lambda: reader.remember("x"), lambda: reader.forget([mine.id]), lambda: reader.pin([mine.id])):
        with pytest.raises(AccessDenied):
            op()
    # Its own cube: everything works, and lands in the audit log without the text.
    added = home.remember("Alice moved to Porto", kind="fact")
    assert added["cube"] == "home"
    assert home.pin([added["id"]]) == [added["id"]] and home.forget([mine.id]) == [mine.id]
    assert home.history(mine.id)[-1]["op"] == "forget"
    log = access.read_audit(store)
    assert {r["op"] for r in log} >= {"recall", "list", "remember", "pin", "forget", "history", "show"}
    assert "Alice" not in (store.state_dir / "audit.jsonl").read_text()


def test_adds_that_arrive_together_share_a_commit_and_none_is_lost(store, worker):
    service = MemoryService(store, worker, Scope("local"))
    store.add("the first")
    before = commit_count(store.root)
    ids: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(10):
            unit = service.remember(f"note {n}-{i} from a client")
            with lock:
                ids.append(unit["id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 80
    assert {u.id for u in store.get_many(ids)} == set(ids)
    assert commit_count(store.root) - before < 80  # grouped
    assert checking.check(store).ok


# ---- memos mcp, with the SDK's client --------------------------------------------------------


def _mcp_session(root: Path, *extra: str):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "memos_cli", "--store", str(root), "mcp", *extra],
                                   env={**os.environ})
    return Client(params, read_timeout_seconds=120)


def test_mcp_over_stdio_with_the_sdk_client(store):
    store.add("Carol plays chess on Sundays", kind="fact", tags=["carol"])
    other = store.add("a secret of the work cube", cube="work")

    async def run() -> None:
        async with _mcp_session(store.root) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"remember", "recall", "forget", "show", "list", "pin", "unpin", "history", "ask"}
            assert tools["recall"].annotations.read_only_hint and not tools["forget"].annotations.read_only_hint
            assert tools["forget"].annotations.destructive_hint and tools["recall"].output_schema
            added = (await client.call_tool("remember", {"text": "Dan runs marathons", "kind": "fact"})).structured_content
            got = (await client.call_tool("recall", {"query": "who plays chess", "k": 3})).structured_content
            assert got["results"][0]["text"].startswith("Carol plays chess") and got["results"][0]["relevance"] > 0.5
            nothing = await client.call_tool("recall", {"query": "the capital of Peru", "min_relevance": 0.5})
            assert nothing.structured_content["results"] == []
            assert (await client.call_tool("show", {"id": added["id"]})).structured_content["text"] == "Dan runs marathons"
            assert len((await client.call_tool("list", {"limit": 10})).structured_content["units"]) == 3
            assert (await client.call_tool("pin", {"ids": [added["id"]]})).structured_content["pinned"] == [added["id"]]
            pinned = await client.read_resource("memos://pinned/default")
            assert "Dan runs marathons" in pinned.contents[0].text
            one = await client.read_resource(f"memos://unit/{added['id']}")
            assert json.loads(one.contents[0].text)["id"] == added["id"]
            assert (await client.call_tool("unpin", {"ids": [added["id"]]})).structured_content["unpinned"]
            assert len((await client.call_tool("history", {"id": added["id"]})).structured_content["versions"]) == 3
            answer = (await client.call_tool("ask", {"question": "What does Carol play?", "max_tokens": 8})).structured_content
            assert answer["answer"] and answer["memories"]
            assert (await client.call_tool("forget", {"ids": [added["id"]]})).structured_content["forgotten"]
            bad = await client.call_tool("show", {"id": "zzzzzzzz"})
            assert bad.is_error and "no memory" in bad.content[0].text
            missing = await client.call_tool("no_such_tool", {})
            assert missing.is_error

        async with _mcp_session(store.root, "--cube", "default", "--read-only", "--no-chat") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools == {"recall", "show", "list", "history"}
            hidden = await client.call_tool("show", {"id": other.id})
            assert hidden.is_error and "no memory" in hidden.content[0].text
            results = (await client.call_tool("recall", {"query": "secret of the work cube"})).structured_content
            assert all(r["cube"] == "default" for r in results["results"])

    asyncio.run(run())
    assert checking.check(store).ok


# ---- memos serve -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(root), "serve", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    assert json.loads(line)["running"]
    return proc


def _http(port: int, method: str, path: str, body: object = None, token: str | None = None,
          raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _too_large(port: int, token: str) -> bytes:
    """A request announcing a body over the limit: answered (413) before the body is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"POST /v1/recall HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode())
        conn.sendall(b'{"query": "' + b"x" * 1000)  # then the client stops sending, as one that disconnects
        return conn.recv(200)


@pytest.mark.slow
def test_serve_http_tokens_faults_and_a_clean_stop(store, cli):
    home = store.add("Alice lives in Lisbon", cube="home")
    work = store.add("the launch is on Friday", cube="work")
    _, writer = access.create(store, "writer", ["home"], write=True)
    _, reader = access.create(store, "reader", ["work"], write=False)
    port = _free_port()
    proc = _start(store.root, "--port", str(port))
    try:
        # The same store refuses a second server, naming the first one's pid.
        second = cli("serve", "--port", str(_free_port()))
        assert_clean_failure(second, match=f"pid {proc.pid}")
        assert_clean_failure(cli("serve", "--port", str(port)), match="cannot listen")  # the port is taken
        status = json.loads(cli("serve", "--status", "--json").out)
        assert status["running"] and status["pid"] == proc.pid and status["port"] == port

        assert _http(port, "POST", "/v1/recall", {"query": "Lisbon"})[0] == 401
        assert _http(port, "POST", "/v1/recall", {"query": "Lisbon"}, token="memos_nope")[0] == 401
        code, got = _http(port, "POST", "/v1/recall", {"query": "where does Alice live"}, token=writer)
        assert code == 200 and [r["id"] for r in got["results"]] == [home.id]
        assert _http(port, "POST", "/v1/recall", {"query": "capital of Peru", "min_relevance": 0.5},
                     token=writer)[1] == {"query": "capital of Peru", "results": []}
        assert _http(port, "POST", "/v1/recall", {"query": "launch", "cube": "work"}, token=writer)[0] == 403
        assert _http(port, "GET", f"/v1/units/{work.id}", token=writer)[0] == 404
        assert _http(port, "GET", f"/v1/units/{work.id}", token=reader)[0] == 200
        assert _http(port, "POST", "/v1/forget", {"ids": [work.id]}, token=reader)[0] == 403
        assert _http(port, "POST", "/v1/remember", {"text": "x", "cube": "work"}, token=reader)[0] == 403
        assert _http(port, "POST", "/v1/recall", raw=b"{not json", token=writer)[0] == 400
        assert _http(port, "POST", "/v1/recall", {"query": "x", "bogus": 1}, token=writer)[0] == 400
        assert _too_large(port, writer).startswith(b"HTTP/1.1 413")
        assert _http(port, "GET", "/v1/units/zzzzzzzzzzzzzz", token=writer)[0] == 404
        code, added = _http(port, "POST", "/v1/remember", {"text": "Alice adopted a cat", "kind": "fact"}, token=writer)
        assert code == 200 and added["cube"] == "home"
        # MCP over HTTP: the token's scope holds there too.
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "recall", "arguments": {"query": "launch Friday Alice"}}}
        _, answer = _http(port, "POST", "/mcp", call, token=reader)
        assert [r["cube"] for r in answer["result"]["structuredContent"]["results"]] == ["work"]
        assert _http(port, "POST", "/mcp", call)[0] == 401
        # The OpenAI-compatible endpoint.
        assert _http(port, "GET", "/v1/models", token=writer)[1]["data"][0]["id"] == "memos"
        question = [{"role": "user", "content": "Where does Alice live?"}]
        code, done = _http(port, "POST", "/v1/chat/completions", {"model": "memos", "max_tokens": 8, "messages": question},
                           token=writer)
        assert code == 200 and done["choices"][0]["message"]["role"] == "assistant"
        assert home.id in done["memos"]["memories"]
        # A client sends the whole conversation each time: the server resumes it from its kept state.
        said = done["choices"][0]["message"]["content"]
        usage = [done["usage"]]
        for follow in ("And Bob?", "Thanks!"):
            question += [{"role": "assistant", "content": said}, {"role": "user", "content": follow}]
            code, done = _http(port, "POST", "/v1/chat/completions", {"model": "memos", "max_tokens": 8,
                                                                     "messages": question}, token=writer)
            assert code == 200
            said = done["choices"][0]["message"]["content"]
            usage.append(done["usage"])
        cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usage]
        assert 0 < cached[0] == cached[1] < cached[2] < usage[2]["prompt_tokens"]  # the head; then the first exchange too
        assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usage)
        code, text = _http(port, "POST", "/v1/chat/completions", {"model": "memos", "max_tokens": 4, "stream": True,
                                                                  "messages": [{"role": "user", "content": "Hi"}]},
                           token=writer)
        assert code == 200 and text.rstrip().endswith("data: [DONE]") and '"chat.completion.chunk"' in text
        # Revoked: refused from the next request on.
        access.revoke(store, "writer")
        assert _http(port, "POST", "/v1/recall", {"query": "x"}, token=writer)[0] == 401
        # The CLI sends its requests to the server, and they land in the same store.
        via = cli("add", "Bob plays the cello", "--cube", "home", "--json")
        assert via.returncode == 0, via.err
        found = json.loads(cli("recall", "cello", "--json", "--cube", "home").out)
        assert found["results"][0]["id"] == json.loads(via.out)["id"]
        local = json.loads(cli("--no-server", "recall", "cello", "--json", "--cube", "home").out)
        assert [r["id"] for r in local["results"]] == [r["id"] for r in found["results"]]
        assert 0 <= found["results"][0]["relevance"] <= 1
        # A relevance floor, through the server's fast path and its JSON endpoint: nothing is about Peru.
        none = cli("recall", "What is the capital of Peru?", "--json", "--cube", "home", "--min-relevance", "0.5")
        assert json.loads(none.out)["results"] == [], none.err
        assert _http(port, "POST", "/v1/ask", {"question": "x", "min_relevance": "high"}, token=reader)[0] == 400
        asked = cli("chat", "Who plays the cello?", "--cube", "home", "--max-tokens", "4", "--no-save", "-k", "2")
        assert asked.returncode == 0 and asked.out.strip(), asked.err
        assert _http(port, "POST", "/v1/ask", {"question": "x", "k": "many"}, token=reader)[0] == 400
        log = access.read_audit(store)
        assert {"unauthorized", "denied", "not found", "bad input"} <= {r["status"] for r in log}
        assert "Lisbon" not in (store.state_dir / "audit.jsonl").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert not (store.state_dir / "serve.json").exists()
    assert json.loads(cli("serve", "--status", "--json").out)["running"] is False
    assert cli("check").returncode == 0


@pytest.mark.slow
def test_a_server_killed_mid_write_leaves_a_store_that_recovers_and_a_socket_the_next_one_clears(store, cli):
    store.add("before the server")
    proc = _start(store.root, "--no-chat")
    writers = [subprocess.Popen([sys.executable, "-m", "memos_cli", "--store", str(store.root), "add", f"write {i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(6)]
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for w in writers:
        w.wait(timeout=120)  # each either landed through the server, or failed, or ran locally: none hangs
    assert (store.state_dir / "serve.json").exists()  # left by the killed server
    again = _start(store.root, "--no-chat")
    try:
        assert cli("recall", "write", "--json").returncode == 0
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    done = cli("check")
    assert done.returncode == 0, done.out + done.err
    acknowledged = [w.stdout.read().decode().strip() for w in writers if w.returncode == 0]
    assert all(store.get(uid) for uid in acknowledged)
    assert head(store.root)


def test_chat_sessions_are_made_anew_after_a_purge(store):
    from memos_cli.agents.service import Chats
    from memos_cli.store.purge import purge

    leak = store.add("the pinned secret is walnut", pinned=True)
    store.add("something else")
    chats = Chats(store)
    first = chats.session("default")
    assert chats.session("default") is first  # warm: kept between questions
    purge(store, [leak.id])
    again = chats.session("default")
    assert again is not first and leak.id not in again.head.units


def test_bad_input_to_the_agent_commands_is_one_line_and_changes_nothing(store, cli):
    store.add("a memory")
    root, before = store.root, head(store.root)
    assert_clean_failure(cli("mcp", "--cube", "no such cube"), root, before, "bad cube")
    assert_clean_failure(cli("token", "revoke", "nobody"), root, before, "no token named")
    assert_clean_failure(cli("token", "create", "x", "--cube", "bad cube!"), root, before, "bad cube")
    assert_clean_failure(cli("serve", "--port", "0"), root, before, "")
    missing = store.root.parent / "nowhere"
    for args in (["audit"], ["token", "list"], ["serve", "--status"]):
        assert_clean_failure(cli(*args, store=missing), match="no memos store")
    assert not missing.exists()
