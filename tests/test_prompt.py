"""The prompt: memory lines, the recalled block's token budget, and chat templates
split into a head (what a KV cache holds) and a tail. No model is loaded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memos_cli.activation import prompt
from memos_cli.errors import ModelError
from memos_cli.models.generator import PromptFormat
from memos_cli.plaintext.units import MemoryUnit

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}[assistant]"
)


def unit(text: str, uid: str = "01m7yq0hz716rh", day: int = 8) -> MemoryUnit:
    return MemoryUnit(id=uid, text=text, time=datetime(2024, 5, day, tzinfo=UTC))


def words(text: str) -> int:
    return len(text.split())


def test_memory_line_is_one_dated_line() -> None:
    assert prompt.memory_line(unit("Alice\nmoved   to Lisbon")) == "- [2024-05-08] Alice moved to Lisbon"


def test_head_text_holds_the_units_in_order() -> None:
    head = prompt.head_text([unit("first", day=1), unit("second", day=2)])
    assert head.startswith(prompt.INSTRUCTIONS) and head.index("first") < head.index("second")
    assert prompt.head_text([]) == prompt.INSTRUCTIONS


def test_recalled_block_keeps_within_its_budget_and_skips_what_does_not_fit() -> None:
    units = [unit("a b c d e f g h i j k l", "01m7yq0hz716r1"), unit("short one", "01m7yq0hz716r2"),
             unit("another short", "01m7yq0hz716r3")]
    text, used = prompt.recalled_block(units, budget=16, count=words)
    assert [u.id for u in used] == ["01m7yq0hz716r2", "01m7yq0hz716r3"]  # the long one did not fit
    assert sum(words(line) + 1 for line in text.splitlines()[1:]) + words(prompt.RECALLED_TITLE) + 1 <= 16
    assert prompt.recalled_block(units, budget=0, count=words) == ("", [])


def test_plain_format_head_does_not_depend_on_the_turn() -> None:
    fmt = PromptFormat(None, "<bos>", "<eos>")
    head1, tail1 = fmt.render("HEAD", "mem one", [], "q1?")
    head2, tail2 = fmt.render("HEAD", "mem two", [("q1?", "a1")], "q2?")
    assert head1 == head2 == "HEAD"
    assert tail1 == "\nmem one\n\nUser: q1?\nAssistant:"
    assert tail2 == "\nUser: q1?\nAssistant: a1\n\nmem two\n\nUser: q2?\nAssistant:"  # this turn's memories last
    assert fmt.render("HEAD", "", [], "q?")[1] == "\nUser: q?\nAssistant:"  # what parametric memory learns on
    assert "\nUser:" in fmt.stop


@pytest.mark.parametrize("template", [None, GEMMA_TEMPLATE, NO_SYSTEM_TEMPLATE])
def test_the_conversation_grows_at_its_end_and_holds_no_turns_memories(template: str | None) -> None:
    """What a kept KV state of the conversation rests on: its text depends on the history only, and
    each exchange adds to its end."""
    fmt = PromptFormat(template, "<bos>", "<eos>")
    history = [("q1?", "a1"), ("q2?", "a2"), ("q3?", "a3")]
    texts = []
    for n in range(len(history) + 1):
        head, conversation, turn = fmt.render_parts("HEAD", f"mem {n}", history[:n], f"next{n}?")
        assert (head, conversation + turn) == fmt.render("HEAD", f"mem {n}", history[:n], f"next{n}?")
        assert f"mem {n}" in turn and f"next{n}?" in turn and "mem" not in conversation
        assert fmt.render_parts("HEAD", "other", history[:n], "other?")[1] == conversation
        texts.append(conversation)
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    assert "q3?" in texts[3] and "a3" in texts[3] and "q3?" not in texts[2]


@pytest.mark.parametrize("template", [GEMMA_TEMPLATE, NO_SYSTEM_TEMPLATE])
def test_a_chat_template_is_split_after_the_head(template: str) -> None:
    fmt = PromptFormat(template, "<bos>", "<eos>")
    head1, tail1 = fmt.render("HEAD BLOCK", "recalled", [], "q1?")
    head2, tail2 = fmt.render("HEAD BLOCK", "other memories", [("q1?", "a1")], "q2?")
    assert head1 == head2 and head1.endswith("HEAD BLOCK")
    whole = head2 + tail2
    assert whole.index("HEAD BLOCK") < whole.index("q1?") < whole.index("a1") < whole.index("other memories") < whole.index("q2?")
    assert fmt.starts_with_bos(head1) == ("bos_token" in template)


def test_a_template_that_cannot_hold_the_head_is_refused() -> None:
    fmt = PromptFormat("{{ raise_exception('no') }}", "<bos>", "<eos>")
    with pytest.raises(ModelError, match="chat template"):
        fmt.render("HEAD", "", [], "q?")


def test_only_what_may_begin_a_stop_string_is_held_back() -> None:
    from memos_cli.models.generator import _stop_start

    stops = ["\nUser:", "\n- [", "\nMemories that may be relevant:"]
    assert _stop_start("Hello there", stops) == 0  # the first piece goes out at once
    assert _stop_start("Hello\n", stops) == 1
    assert _stop_start("Hello\nUs", stops) == 3
    assert _stop_start("a\n-", stops) == 2
    assert _stop_start("x\nMemories that", stops) == len("\nMemories that")
    assert _stop_start("", stops) == 0 and _stop_start("abc", []) == 0
