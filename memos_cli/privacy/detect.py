"""Finding secrets and personal data in text.

Credentials are found by the plugins of Yelp's ``detect-secrets`` (called
directly, line by line, and never with its network verification); personal
data by ``phonenumbers`` (phone numbers), ``python-stdnum`` (the Luhn check of
card numbers and the IBAN check) and a regular expression for e-mail
addresses. A ``Finding`` says which kind and which characters; it never
carries the matched text, so nothing downstream can print it by mistake.

The libraries are imported when a ``Detector`` is made (about 0.25 s), so
only commands that write or scan pay for them.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from memos_cli.errors import MemosError
from memos_cli.privacy.kinds import NAMES, ORDER

# detect-secrets' plugin classes by the kind they report.
_PLUGINS: dict[str, tuple[str, ...]] = {
    "private-key": ("private_key.PrivateKeyDetector",),
    "aws-key": ("aws.AWSKeyDetector",),
    "azure-key": ("azure_storage_key.AzureStorageKeyDetector",),
    "github-token": ("github_token.GitHubTokenDetector",),
    "gitlab-token": ("gitlab_token.GitLabTokenDetector",),
    "slack-token": ("slack.SlackDetector",),
    "stripe-key": ("stripe.StripeDetector",),
    "openai-key": ("openai.OpenAIDetector",),
    "service-token": ("npm.NpmDetector", "pypi_token.PypiTokenDetector", "sendgrid.SendGridDetector",
                      "twilio.TwilioKeyDetector", "discord.DiscordBotTokenDetector",
                      "telegram_token.TelegramBotTokenDetector", "mailchimp.MailchimpDetector",
                      "square_oauth.SquareOAuthDetector", "artifactory.ArtifactoryDetector",
                      "ibm_cloud_iam.IbmCloudIamDetector", "ibm_cos_hmac.IbmCosHmacDetector",
                      "cloudant.CloudantDetector", "softlayer.SoftlayerDetector"),
    "jwt": ("jwt.JwtTokenDetector",),
    "url-password": ("basic_auth.BasicAuthDetector",),
    "password": ("keyword.KeywordDetector",),
    "high-entropy": ("high_entropy_strings.Base64HighEntropyString", "high_entropy_strings.HexHighEntropyString"),
}
# detect-secrets' heuristic filters (UUIDs, sequences, templates) are for the generic detectors only:
# a value that matched a service's own format (an npm token may be a UUID) is that service's.
_GENERIC = ("password", "high-entropy")

# A secret is a token: a match is widened to the whole run of token characters around it
# (a JWT's signature, a GitHub token from its "ghp" prefix). '=' and '.' only to the right
# (base64 padding, a JWT's dots), so "password=..." keeps its key.
_LEFT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/")
_RIGHT = re.compile(r"[A-Za-z0-9_\-+/=.]*")
_BLOCK_END = re.compile(r"-----END[ A-Z0-9]*PRIVATE KEY[ A-Z]*-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")
# A keyword's value in prose ("password: hunter2") must look like a credential, not a word.
_CREDENTIAL_LIKE = re.compile(r"(?=\S*[0-9\W_])\S{6,}|\S{12,}")
# ... and the same in a sentence: "my password is hunter2!", "the wifi passphrase was Tr0ub4dor".
_PROSE_KEYWORD_SEEN = re.compile(r"pass|api[ _-]?key|secret key|access token", re.I)
_PROSE_KEYWORD = re.compile(r"\b(?:password|passwd|passphrase|passcode|api[ _-]?key|secret key|access token)"
                            r"\s+(?:is|was|=|:)\s+[\"'`]?(\S+?)[\"'`]?[.,;:!?)]*(?:\s|$)", re.I)

_EMAIL = re.compile(r"(?<![\w.%+/-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")
_CARD = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
_CARD_PREFIX = re.compile(r"4|5[0-9]|2[2-7]|3[04-9]|6")  # Visa, Mastercard/Maestro, Amex/Diners/JCB, Discover/UnionPay
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")


class DetectorError(MemosError):
    """A detector library that is missing or broken: nothing can be checked, so nothing is written."""

    exit_code = 5


@dataclass(frozen=True, order=True)
class Finding:
    """Sensitive text at ``text[start:end]`` (the matched text itself is never kept)."""

    start: int
    end: int
    kind: str


class _Deferred(types.ModuleType):
    """A stand-in for ``requests`` that imports it on first use. detect-secrets imports requests
    (0.2 s) only for the network verification memos never calls; importing it on every write would
    make each `memos add` that much slower. Any use (an attribute) brings the real module in, and
    from then on this one is the real one; only while the plugins are being imported does
    ``Response``, which two of them name in a return annotation, give a placeholder."""

    importing_plugins = False

    def __getattr__(self, name: str) -> Any:
        if name == "Response" and _Deferred.importing_plugins:
            return type("Response", (), {"__module__": __name__})
        if sys.modules.get("requests") is self:
            del sys.modules["requests"]
        real = importlib.import_module("requests")
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


@contextmanager
def _importing_plugins() -> Iterator[None]:
    """Around every import of detect-secrets: ``requests`` deferred (see ``_Deferred``)."""
    if "requests" not in sys.modules and "detect_secrets" not in sys.modules:
        sys.modules["requests"] = _Deferred("requests")
    _Deferred.importing_plugins = True
    try:
        yield
    finally:
        _Deferred.importing_plugins = False


def _load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), name)


class Detector:
    """Finds the given kinds in text; loads their libraries once, when made."""

    def __init__(self, kinds: Iterable[str], *, phone_region: str = "") -> None:
        self.kinds = tuple(k for k in NAMES if k in set(kinds))
        self.phone_region = phone_region.upper() or None
        self._plugins: list[tuple[str, Any]] = []
        try:
            with _importing_plugins():
                self._load_secrets()
            if "phone" in self.kinds:
                import phonenumbers

                self._phones = phonenumbers
            if "card" in self.kinds:
                from stdnum import luhn

                self._luhn = luhn
            if "iban" in self.kinds:
                from stdnum import iban

                self._iban = iban
        except Exception as exc:  # an ImportError, or a plugin that changed shape in a new release
            raise DetectorError(f"the privacy detectors failed to load ({type(exc).__name__}: {exc}); "
                                "nothing was written or scanned: reinstall memos (pip install -e .)") from None

    def _load_secrets(self) -> None:
        for kind in self.kinds:
            for path in _PLUGINS.get(kind, ()):
                self._plugins.append((kind, _load(path)()))
        if "password" in self.kinds:
            from detect_secrets.plugins import keyword

            self._keyword_regexes = (keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
                                     keyword.CONFIG_DENYLIST_REGEX_TO_GROUP)
            # Its patterns all need one of its keywords: looked for first, they skip the slow
            # patterns (0.6 ms a line) on the lines without one.
            self._keyword_seen = re.compile("|".join(keyword.DENYLIST), re.IGNORECASE)
        if any(k in self.kinds for k in _GENERIC):
            from detect_secrets.filters import heuristic

            self._ignore: tuple[Callable[[str], bool], ...] = (
                heuristic.is_sequential_string, heuristic.is_potential_uuid,
                heuristic.is_templated_secret, heuristic.is_prefixed_with_dollar_sign)
            self._indirect = heuristic.is_indirect_reference

    def find(self, text: str) -> list[Finding]:
        """Every finding in ``text``, in order, none overlapping (the earlier kind wins)."""
        if not self.kinds or not text:
            return []
        found: list[Finding] = []
        offset = 0
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            if body.strip():
                found += (Finding(offset + s, offset + e, kind) for s, e, kind in self._find_line(body))
            offset += len(line)
        found = [self._block(text, f) if f.kind == "private-key" else f for f in found]
        return _resolve(found)

    def _find_line(self, line: str) -> Iterator[tuple[int, int, str]]:
        for kind, plugin in self._plugins:
            for value in self._values(kind, plugin, line):
                yield from ((s, e, kind) for s, e in _spans(line, value, plugin))
        if "card" in self.kinds:
            for m in _CARD.finditer(line):
                digits = re.sub(r"\D", "", m.group())
                if _CARD_PREFIX.match(digits) and self._luhn.is_valid(digits):
                    yield m.start(), m.end(), "card"
        if "iban" in self.kinds:
            for m in _IBAN.finditer(line):
                if self._iban.is_valid(m.group()):
                    yield m.start(), m.end(), "iban"
        if "email" in self.kinds:
            for m in _EMAIL.finditer(line):
                # After a colon only as "mailto:": "user:pass@host" is a url-password's.
                if m.start() == 0 or line[m.start() - 1] != ":" or line[:m.start() - 1].lower().endswith("mailto"):
                    yield m.start(), m.end(), "email"
        if "phone" in self.kinds and any(c.isdigit() for c in line):
            phones = self._phones
            for m in phones.PhoneNumberMatcher(line, self.phone_region, leniency=phones.Leniency.VALID):
                yield m.start, m.end, "phone"

    def _values(self, kind: str, plugin: Any, line: str) -> Iterator[str]:
        if kind == "password":
            if not self._keyword_seen.search(line) and not _PROSE_KEYWORD_SEEN.search(line):
                return
            if self._indirect(line):
                return
            quoted, config = self._keyword_regexes
            for regexes, strict in ((quoted, False), (config, True)):
                for value in plugin.analyze_string(line, denylist_regex_to_group=regexes):
                    value = value.strip("'\"")
                    if value and not (strict and not _CREDENTIAL_LIKE.fullmatch(value)) and not self._ignored(value):
                        yield value
            for m in _PROSE_KEYWORD.finditer(line):
                if _CREDENTIAL_LIKE.fullmatch(m.group(1)) and not self._ignored(m.group(1)):
                    yield m.group(1)
            return
        for value in plugin.analyze_string(line):
            if kind == "high-entropy" and plugin.calculate_shannon_entropy(value) <= plugin.entropy_limit:
                continue
            if not value:  # a pattern's optional group that did not match: the whole match is the secret
                for pattern in getattr(plugin, "denylist", ()):
                    yield from (m.group() for m in pattern.finditer(line) if m.group())
            elif kind not in _GENERIC or not self._ignored(value):
                yield value

    def _ignored(self, value: str) -> bool:
        return any(check(value) for check in self._ignore)

    @staticmethod
    def _block(text: str, found: Finding) -> Finding:
        """A private key is the whole block: from its BEGIN line to its END line (or the end of the text)."""
        start = text.rfind("\n", 0, found.start) + 1
        end = _BLOCK_END.search(text, found.end)
        return Finding(start, end.end() if end else len(text.rstrip()), found.kind)


def _spans(line: str, value: str, plugin: Any) -> Iterator[tuple[int, int]]:
    """Where ``value`` (what a plugin reported) is in the line, widened to whole tokens.

    A short value (a GitHub token's "ghp", a capture group) counts only where the
    token around it matches one of the plugin's own patterns.
    """
    patterns = getattr(plugin, "denylist", ())
    at = line.find(value)
    while at >= 0:
        start = at
        while start > 0 and line[start - 1] in _LEFT:
            start -= 1
        end = _RIGHT.match(line, at + len(value)).end()
        while end > at + len(value) and line[end - 1] == ".":
            end -= 1  # a sentence's full stop is not part of the token
        token = line[start:end]
        if len(value) >= 8 or not patterns or any(p.search(token) for p in patterns):
            yield start, end
        at = line.find(value, at + len(value))


def _resolve(found: list[Finding]) -> list[Finding]:
    """One finding per stretch of text: where findings overlap, the kind listed first wins,
    and it covers them all (so redacting it hides every part of each)."""
    out: list[Finding] = []
    for f in sorted(found):
        if out and f.start < out[-1].end:
            last = out[-1]
            kind = min(last.kind, f.kind, key=ORDER.__getitem__)
            out[-1] = Finding(last.start, max(last.end, f.end), kind)
        else:
            out.append(f)
    return out
