"""Privacy: the guard on every write (refuse, redact, allow, overrides), `memos scan`, recall --mask,
the [privacy] table, and what a detector that cannot load does. Real detectors, real store, real git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos_cli.privacy.detect import Detector
from memos_cli.privacy.guard import Guard, PrivacyError
from memos_cli.privacy.kinds import NAMES
from memos_cli.privacy.policy import PrivacyPolicy, parse_override

from .conftest import assert_clean_failure, commit_count, git, head

GITHUB = "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"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAwJ2kT\nq3Jt9PZ0Vb8=\n-----END RSA PRIVATE KEY-----"

# One example of each kind, in a sentence; the kind is the only one in its text.
EXAMPLES = {
    "private-key": f"the deploy key:\n{KEY_BLOCK}\nkeep it safe",
    "aws-key": f"staging uses {AWS} until May",
    "azure-key": "conn: AccountKey=" + "a1B2c3D4" * 11,
    "github-token": f"my github token is {GITHUB} for the CI",
    "gitlab-token": "gitlab: glpat-AbCdEfGhIjKlMnOpQrSt1234",
    "slack-token": "bot token xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "stripe-key": "stripe live key sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "openai-key": "openai sk-proj-AbCdEfGhIjKlMnOpQrStT3BlbkFJAbCdEfGhIjKlMnOpQrSt",
    "service-token": "sendgrid 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 for mail",
    "jwt": f"session {JWT} expires soon",
    "url-password": "db at postgres://admin:S3cr3tPass@db.internal:5432/app",
    "password": "my password is Hunter2hunter!",
    "high-entropy": 'the signing secret "x9Fq2LmP8vRt4ZwK7bNc3YdH6sJe1UaG"',
    "card": "card 4111 1111 1111 1111, exp 12/28",
    "iban": "rent goes to GB82 WEST 1234 5698 7654 32 monthly",
    "email": "Bob's address is bob.smith@example.org",
    "phone": "call Carol on +44 20 7946 0958 after six",
}

CLEAN = [
    "Fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b, reviewed by Ana.",
    "see memory 01m7y7n8qk18kx and 01m8ty1b5j19y3 for the details",
    "Meeting moved to 2024-03-14 at 10:30 in room 4512; bring the Q3 numbers (1,204,330 units).",
    "Order #123456789 shipped; tracking 1Z999AA10123456784? no, that was last year.",
    "The request id was 550e8400-e29b-41d4-a716-446655440000 and it timed out after 30s.",
    "I forgot my password again, the secret is patience, and the key to the shed is under the mat.",
    "The wifi password is on the fridge.",
    "Version 3.11.7 is installed at /usr/local/bin/python3; the build took 7.5 minutes.",
    "Caroline went to the LGBTQ support group on 7 May 2023 and said it was very helpful.",
    "Call me back at extension 2231, or on the landline after 6pm.",
    "She ran 5000 metres in 21:34 and paid 42.50 EUR for the entry.",
    "https://example.com/docs/page?id=42#section-3 explains the API token scopes.",
]


@pytest.fixture(scope="module")
def everything() -> Detector:
    return Detector(NAMES)


@pytest.mark.parametrize("kind", NAMES)
def test_each_kind_is_found_and_only_it(everything: Detector, kind: str) -> None:
    found = everything.find(EXAMPLES[kind])
    assert [f.kind for f in found] == [kind], found


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_notes_with_numbers_ids_and_hashes_pass(everything: Detector, text: str) -> None:
    assert everything.find(text) == []


def test_the_detectors_leave_requests_unloaded_until_it_is_used() -> None:
    """detect-secrets imports requests only for network verification, which memos never calls: it is
    not loaded (0.2 s a write), and a real use of it still gets the real module."""
    import subprocess
    import sys

    code = ("import sys\nfrom memos_cli.privacy.detect import Detector\nfrom memos_cli.privacy.kinds import NAMES\n"
            "assert Detector(NAMES).find('key AKIAIOSFODNN7EXAMPLE')\nassert 'urllib3' not in sys.modules\n"
            "import requests\nassert requests.Response.__module__ == 'requests.models' and callable(requests.get)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_redaction_covers_the_whole_secret() -> None:
    guard = Guard(PrivacyPolicy(secrets="redact"))
    for text, left in ((EXAMPLES["jwt"], "session [redacted:jwt] expires soon"),
                       (EXAMPLES["github-token"], "my github token is [redacted:github-token] for the CI"),
                       (EXAMPLES["private-key"], "the deploy key:\n[redacted:private-key]\nkeep it safe"),
                       (EXAMPLES["password"], "my password is [redacted:password]!"),
                       (f"key {AWS}.", "key [redacted:aws-key].")):
        assert guard.text(text) == left
    assert guard.screening.redacted["jwt"] == 1


def test_refusal_names_the_kind_and_where_never_the_text() -> None:
    guard = Guard(PrivacyPolicy())
    with pytest.raises(PrivacyError) as info:
        guard.text("first line\n" + EXAMPLES["github-token"])
    message = str(info.value)
    assert "github-token" in message and "line 2" in message and GITHUB not in message
    with pytest.raises(PrivacyError, match=r'meta\["db"\]'):
        guard.value({"db": EXAMPLES["url-password"]}, "meta")


def test_policy_actions_groups_kinds_and_overrides() -> None:
    policy = PrivacyPolicy.from_table({"personal": "redact", "phone": "allow", "aws-key": "allow"})
    actions = policy.actions()
    assert actions["email"] == "redact" and actions["phone"] == "allow" and actions["aws-key"] == "allow"
    assert actions["jwt"] == "refuse"
    assert policy.actions(parse_override(["allow"]))["jwt"] == "allow"
    assert policy.actions(parse_override(["secrets=redact", "email=allow"]))["jwt"] == "redact"
    assert policy.actions(parse_override(["email=allow"]))["email"] == "allow"
    for bad, match in (({"secrets": "drop"}, "refuse"), ({"emial": "redact"}, "did you mean privacy.email"),
                       ({"mask": ["secrets", "pasword"]}, "unknown kind"), ({"phone_region": "Britain"}, "two-letter")):
        with pytest.raises(Exception, match=match):
            PrivacyPolicy.from_table(bad)


# ---- the guard on the write paths (through the CLI) ----------------------------------------


def _objects_text(root: Path) -> str:
    """Every version of every file git has, as text: what a clone or a remote would get."""
    return git(root, "log", "--all", "-p", "--format=%B")


def _files_text(root: Path) -> bytes:
    """Every byte of every file under the store but git's packed objects (the table, logs, caches)."""
    out = b""
    for path in root.rglob("*"):
        if path.is_file() and "/.git/objects/" not in str(path):
            out += path.read_bytes()
    return out


def test_add_refuses_a_secret_and_writes_nothing(cli, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("add", "a first memory").returncode == 0
    before = head(root)
    done = cli("add", EXAMPLES["github-token"], "--tag", "ci")
    assert_clean_failure(done, root, before, "holds a github-token")
    assert done.returncode == 2 and GITHUB not in done.err
    assert GITHUB.encode() not in _files_text(root) and GITHUB not in _objects_text(root)
    # In meta too, and from stdin.
    assert_clean_failure(cli("add", "plain", "--meta", f"token={GITHUB}"), root, before, "meta")
    assert_clean_failure(cli("add", "-", input=EXAMPLES["aws-key"]), root, before, "aws-key")


def test_redact_by_policy_and_by_override_and_the_override_is_in_the_commit(cli, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("init").returncode == 0
    assert cli("config", "set", "privacy.email", "redact").returncode == 0
    done = cli("add", EXAMPLES["email"], "--json")
    assert done.returncode == 0, done.err
    assert json.loads(done.out)["text"] == "Bob's address is [redacted:email]"
    assert "redacted 1 email" in done.err
    message = git(root, "log", "-1", "--format=%B")
    assert "Memos-Privacy-Redacted: 1 email" in message and "Memos-Privacy-Override" not in message

    done = cli("add", EXAMPLES["github-token"], "--privacy", "redact", "--meta", f"key={AWS}", "--json")
    assert done.returncode == 0, done.err
    unit = json.loads(done.out)
    assert unit["text"] == "my github token is [redacted:github-token] for the CI"
    assert unit["meta"] == {"key": "[redacted:aws-key]"}
    message = git(root, "log", "-1", "--format=%B")
    assert "Memos-Privacy-Override: redact" in message
    assert "Memos-Privacy-Redacted: 1 aws-key, 1 github-token" in message

    done = cli("add", EXAMPLES["stripe-key"], "--privacy", "stripe-key=allow")
    assert done.returncode == 0, done.err
    message = git(root, "log", "-1", "--format=%B")
    assert "Memos-Privacy-Override: stripe-key=allow" in message and "1 stripe-key" in message
    for secret in ("bob.smith@example.org", GITHUB, AWS):
        assert secret.encode() not in _files_text(root) and secret not in _objects_text(root)


def test_import_and_edit_are_guarded(store, cli) -> None:
    root = store.root
    uid = store.add("the server is up").id
    before = head(root)
    lines = [json.dumps({"text": "fine"}), json.dumps({"text": "fine too", "meta": {"dsn": EXAMPLES["url-password"]}})]
    assert_clean_failure(cli("import", "-", input="\n".join(lines) + "\n"), root, before,
                         'line 2: meta["dsn"] holds a url-password')
    done = cli("import", "-", "--privacy", "redact", "--json", input="\n".join(lines) + "\n")
    assert done.returncode == 0, done.err
    shown = json.loads(cli("show", json.loads(done.out)["ids"][1], "--json").out)
    assert shown["meta"]["dsn"] == "db at postgres://admin:[redacted:url-password]@db.internal:5432/app"

    before = head(root)
    assert_clean_failure(cli("edit", uid, "--text", EXAMPLES["jwt"]), root, before, "the new text holds a jwt")
    done = cli("edit", uid, "--text", EXAMPLES["jwt"], "--privacy", "jwt=redact")
    assert done.returncode == 0, done.err
    assert json.loads(cli("show", uid, "--json").out)["text"] == "session [redacted:jwt] expires soon"
    assert "Memos-Privacy-Override: jwt=redact" in git(root, "log", "-1", "--format=%B")


def test_edit_screens_only_what_is_new(store) -> None:
    unit = store.add(EXAMPLES["aws-key"], meta={"k": GITHUB}, privacy={"*": "allow"})
    assert store.edit(unit.id, {"tags": ["ops"]}).version == 2  # a tag: nothing new to screen
    assert store.edit(unit.id, {"meta": {"k": GITHUB, "note": "fine"}}).version == 3  # the old entry is not new
    with pytest.raises(PrivacyError, match=r'meta\["new"\] holds a jwt'):
        store.edit(unit.id, {"meta": {"k": GITHUB, "new": JWT}})
    with pytest.raises(PrivacyError, match="the new text holds an aws-key"):
        store.edit(unit.id, {"text": EXAMPLES["aws-key"] + " (rotated)"})
    assert store.get(unit.id).version == 3


def test_bad_privacy_settings_and_flags_get_one_line(cli, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("add", "one").returncode == 0
    before = head(root)
    assert_clean_failure(cli("add", "two", "--privacy", "maybe"), root, before, "bad --privacy")
    assert_clean_failure(cli("add", "two", "--privacy", "emial=allow"), root, before, "did you mean email")
    assert_clean_failure(cli("scan", "--kind", "emial"), root, before, "did you mean email")
    assert_clean_failure(cli("scan", "--kind", "personal", store=root.parent / "nowhere"), None, None, "no memos store")
    assert_clean_failure(cli("config", "set", "privacy.secrets", "drop"), root, before, "refuse")
    assert_clean_failure(cli("config", "set", "privacy.pasword", "allow"), root, before, "unknown setting")
    # A malformed table written by hand: the store refuses to open, and nothing is written.
    config = root / "memos.toml"
    config.write_text(config.read_text() + '\n[privacy]\nsecrets = "refuse"\nemial = "redact"\n')
    git(root, "commit", "-qam", "hand edit")
    before = head(root)
    assert_clean_failure(cli("add", "three"), root, before, "privacy.emial")
    config.write_text(config.read_text().replace('emial = "redact"', 'mask = "email"'))
    git(root, "commit", "-qam", "hand edit")
    before = head(root)
    assert_clean_failure(cli("add", "three"), root, before, "privacy.mask")


def test_a_detector_that_cannot_load_stops_the_write(cli, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert cli("add", "one").returncode == 0
    before = head(root)
    broken = tmp_path / "broken"
    (broken / "detect_secrets").mkdir(parents=True)
    (broken / "detect_secrets" / "__init__.py").write_text("raise ImportError('simulated breakage')\n")
    done = cli("add", "two", env={"PYTHONPATH": str(broken)})
    assert_clean_failure(done, root, before, "privacy detectors failed to load")
    assert done.returncode == 5 and commit_count(root) == 2


# ---- scan and mask ---------------------------------------------------------------------------


def test_scan_finds_what_is_stored_and_in_history_and_purge_clears_it(store, cli) -> None:
    store.add("nothing to see")
    done = cli("scan")
    assert done.returncode == 0 and "nothing found" in done.out
    allow = {"*": "allow"}
    kept = store.add(EXAMPLES["github-token"], privacy=allow).id
    edited = store.add(EXAMPLES["password"], privacy=allow).id
    store.edit(edited, {"text": "my password is in the manager now"})
    store.add(EXAMPLES["email"])  # personal data is allowed by default

    done = cli("scan")
    assert done.returncode == 1
    assert kept in done.out and "github-token" in done.out and edited not in done.out
    assert GITHUB not in done.out + done.err and f"memos purge {kept} --yes" in done.err

    report = json.loads(cli("scan", "--history", "--json").out)
    found = {(f["where"], f["unit"], f["version"], f["kind"]) for f in report["findings"]}
    assert found == {("unit", kept, 1, "github-token"), ("history", edited, 1, "password")}
    assert report["purge"] == [kept, edited] and report["scanned"]["versions"] == 5

    personal = json.loads(cli("scan", "--kind", "personal", "--json").out)
    assert [f["kind"] for f in personal["findings"]] == ["email"]

    assert cli("purge", kept, edited, "--yes").returncode == 0
    done = cli("scan", "--history")
    assert done.returncode == 0, done.out + done.err


def test_recall_mask_hides_what_the_policy_names_and_changes_nothing(store, cli) -> None:
    store.add("Carol: carol@example.com, +44 20 7946 0958, card 4111 1111 1111 1111")
    before = head(store.root)
    masked = json.loads(cli("recall", "Carol", "--mask", "--json").out)["results"][0]["text"]
    assert masked == "Carol: [redacted:email], [redacted:phone], card [redacted:card]"
    plain = json.loads(cli("recall", "Carol", "--json").out)["results"][0]["text"]
    assert "carol@example.com" in plain and head(store.root) == before
    store.set_config("privacy.mask", ["email"])
    masked = json.loads(cli("recall", "Carol", "--mask", "--json").out)["results"][0]["text"]
    assert masked == "Carol: [redacted:email], +44 20 7946 0958, card 4111 1111 1111 1111"


@pytest.mark.slow
def test_scan_finds_caches_and_adapters_built_from_a_secret_and_chat_does_not_save_it(cli, tmp_path: Path) -> None:
    from memos_cli.store.store import MemoryStore

    from .test_param_store import _save

    root = tmp_path / "store"
    uid = cli("add", EXAMPLES["aws-key"], "--pin", "--privacy", "allow").out.strip()
    done = cli("kv", "build", "--json")
    assert done.returncode == 0, done.err
    cache = json.loads(done.out)["id"]
    store = MemoryStore(root)
    _save(store, "facts", "steer", units=[store.get(uid)])

    report = json.loads(cli("scan", "--json").out)
    found = {(f["where"], f.get("cache") or f.get("param"), f["unit"]) for f in report["findings"]}
    assert found == {("unit", None, uid), ("kv", cache, uid), ("param", "facts", uid)}

    # A chat turn that holds a secret is answered, and not saved; redacted, it is.
    before = commit_count(root)
    done = cli("chat", f"keep this token: {GITHUB}", "--no-recall", "--temperature", "0", "--max-tokens", "4", "--json")
    assert done.returncode == 0, done.err
    turn = json.loads(done.out)
    assert turn["saved"] is None and "github-token" in turn["unsaved"] and "this turn was not saved" in done.err
    assert commit_count(root) == before and GITHUB not in _objects_text(root)
    done = cli("chat", f"keep this token: {GITHUB}", "--no-recall", "--temperature", "0", "--max-tokens", "4",
               "--json", "--privacy", "redact")
    saved = json.loads(done.out)["saved"]
    assert saved and "[redacted:github-token]" in json.loads(cli("show", saved, "--json").out)["text"]
    assert GITHUB.encode() not in _files_text(root) and GITHUB not in _objects_text(root)


def test_a_summary_the_model_writes_is_screened_too(store) -> None:
    """The scheduler's episode summaries are new text: refused, the action is skipped; redacted, written."""
    from memos_cli.scheduler.apply import apply_plan
    from memos_cli.scheduler.report import Action, Report
    from memos_cli.scheduler.scope import snapshot

    turns = [store.add(t, kind="episode", meta={"session": "s1"}) for t in ("Alice: hi", "Bob: hello", "Alice: bye")]

    def run() -> Action:
        action = Action("summarise", "default", [t.id for t in turns], "old session",
                        extra={"text": f"Alice shared the CI token {GITHUB} with Bob."})
        apply_plan(store, Report(cubes=["default"], dry_run=False, actions=[action]), {"default": snapshot(store, "default")})
        return action

    before = head(store.root)
    skipped = run()
    assert skipped.status == "skipped" and "github-token" in skipped.note and GITHUB not in skipped.note
    assert head(store.root) == before
    store.set_config("privacy.secrets", "redact")
    done = run()
    assert done.status == "done"
    assert store.get(done.units[0]).text == "Alice shared the CI token [redacted:github-token] with Bob."
    assert GITHUB not in _objects_text(store.root)
