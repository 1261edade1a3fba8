"""Labelled corpus for the secret / personal-data detector benchmark.

Writes ``benchmarks/data/privacy_corpus.jsonl``, one note a line::

    {"text": str, "kinds": [kind, ...], "source": str}

``kinds`` is the one kind a positive note holds (the names of
``memos_cli/privacy/kinds.py``) or ``[]`` for a clean note; ``source`` says
where the example came from. Provenance and method: ``data/PRIVACY_CORPUS.md``.

- Secrets: the positive examples of detect-secrets' own plugin tests
  (``tests/plugins/*_test.py``, ``test_data/``, Yelp/detect-secrets at
  5e141933554a0b74e7341841f318be21e895339c, Apache-2.0), copied below as
  literals, plus random ones generated in the exact format of each plugin's
  regex (detect-secrets 1.5.0), each wrapped in a short note.
- Personal data: e-mails at example domains, international (+country code)
  phone numbers, payment cards that pass Luhn with a real network prefix,
  IBANs with correct mod-97 check digits (and national check digits where
  the country has them and the generator computes them: FR, ES, PT).
- Clean notes: synthetic hard negatives (numbers, dates, versions, ids,
  UUIDs, git shas, memos ids, paths, plain URLs, "password"/"secret"/"key" in
  prose, Luhn-failing 16-digit references) and real conversation turns of
  LoCoMo, read at run time from ``../shared/eval/data/locomo_dev.json`` (the
  same place ``bench_locomo.py`` reads it). LoCoMo is CC BY-NC 4.0 and is not
  to be copied into the project, so the jsonl holding its turns is a build
  output (``data/.gitignore``), made again by this script.

Deterministic: one fixed seed, stdlib only, no network.

Usage: python benchmarks/privacy_corpus.py [--eval ../shared/eval] [--out PATH]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import string
import sys
import uuid
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "data" / "privacy_corpus.jsonl"
SEED = 20241202

DS = "detect-secrets "  # source prefix for examples taken from Yelp/detect-secrets
N_SECRET = 30           # notes per secret kind (service-token: N_SERVICE per service)
N_SERVICE = 6
N_PERSONAL = 40
N_SYNTHETIC_CLEAN = 520
N_LOCOMO = 700

ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
HEX = "0123456789abcdef"
B64URL = ALNUM + "-_"
MEMOS_ID = "0123456789abcdefghjkmnpqrstvwxyz"

NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tomas", "Uma", "Vera", "Wen", "Yusuf",
         "Amara", "Bruno", "Chloe", "Diego", "Elif", "Felix", "Greta", "Hassan", "Ingrid", "Jamal", "Keiko", "Luca"]
SURNAMES = ["Smith", "Okafor", "Novak", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Kowalski", "Ferreira",
            "Schmidt", "O'Brien", "Rossi", "Nguyen", "Petrov", "Garcia", "Jensen", "Kaya", "Murphy", "Silva", "Weber"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PROJECTS = ["billing", "staging", "mobile app", "blog", "analytics", "CI runner", "payments",
            "home server", "side project", "data pipeline", "search", "backup job"]


class Gen:
    """All randomness goes through one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def pick(self, seq):
        return self.r.choice(seq)

    def int(self, a: int, b: int) -> int:
        return self.r.randint(a, b)

    def bytes(self, n: int) -> bytes:
        return bytes(self.r.getrandbits(8) for _ in range(n))

    def uuid4(self) -> str:
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def name(self) -> str:
        return self.pick(NAMES)

    def fill(self, template: str, **kw: str) -> str:
        return template.format(name=self.name(), month=self.pick(MONTHS), day=self.pick(DAYS),
                               proj=self.pick(PROJECTS), **kw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def shannon(data: str, charset: str) -> float:
    """detect-secrets' HighEntropyStringsPlugin.calculate_shannon_entropy."""
    import math
    out = 0.0
    for ch in charset:
        p = data.count(ch) / len(data)
        if p > 0:
            out -= p * math.log(p, 2)
    return out


B64_CHARSET = string.ascii_letters + string.digits + "+/" + "\\-_" + "="
HEX_CHARSET = string.hexdigits


def hex_entropy(data: str) -> float:
    """detect-secrets' HexHighEntropyString.calculate_shannon_entropy (digit-only strings are penalised)."""
    import math
    e = shannon(data, HEX_CHARSET)
    if len(data) == 1:
        return e
    try:
        int(data)
        e -= 1.2 / math.log(len(data), 2)
    except ValueError:
        pass
    return e


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the one check digit that makes it pass Luhn."""
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError


def iban_check(cc: str, bban: str) -> str:
    rearranged = bban + cc + "00"
    n = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{98 - n % 97:02d}"


CARDLIKE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)")


def cardlike(text: str) -> bool:
    """A run of 13-19 digits (single spaces or dashes allowed between them) that passes Luhn."""
    return any(luhn_ok(re.sub(r"\D", "", m.group())) for m in CARDLIKE.finditer(text))


def stray_personal(text: str) -> bool:
    """True when a generated secret would also look like personal data (card-like digit run, +phone)."""
    return bool(re.search(r"\+\d{6,}", text)) or cardlike(text)


# --------------------------------------------------------------------------------------------------
# Examples taken from detect-secrets' tests and test data (positives only), by kind.
# Each is (fragment, path in Yelp/detect-secrets). A fragment is a token or a code line; it is
# wrapped in a note below.

AWS_EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # tests/plugins/aws_key_test.py
KW_COMMON = "m{{h}o)p${e]nob(ody[finds>-_$#thisone}}"              # tests/plugins/keyword_test.py
KW_WHITES = "value with quotes and spaces"
KW_LETTER = "A,.:-¨@*¿?!"
CL_PW = "abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234"  # cloudant_test.py
CL_API_KEY = "abcdefghijabcdefghijabcd"
CLOUD_IAM_KEY = "abcd1234abcd1234abcd1234ABCD1234ABCD1234--__"  # ibm_cloud_iam_test.py
COS_SECRET = "1234567890abcdef1234567890abcdef1234567890abcdef"  # ibm_cos_hmac_test.py
SL_TOKEN = "abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234"  # softlayer_test.py

FROM_TESTS: dict[str, list[tuple[str, str]]] = {
    "private-key": [
        ("-----BEGIN RSA PRIVATE KEY-----\nsuper secret private key here\n-----END RSA PRIVATE KEY-----",
         "tests/plugins/private_key_test.py"),
        ("some text here\n-----BEGIN PRIVATE KEY-----\nyabba dabba doo", "tests/plugins/private_key_test.py"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nsomethingSuperRandomAndSecretHereThatShouldNeverBeShared\n"
         "-----END OPENSSH PRIVATE KEY-----", "test_data/files/private_key"),
    ],
    "aws-key": [
        ("AKIAZZZZZZZZZZZZZZZZ", "tests/plugins/aws_key_test.py"),
        ("A3T0ZZZZZZZZZZZZZZZZ", "tests/plugins/aws_key_test.py"),
        ("ABIAZZZZZZZZZZZZZZZZ", "tests/plugins/aws_key_test.py"),
        ("ACCAZZZZZZZZZZZZZZZZ", "tests/plugins/aws_key_test.py"),
        ("ASIAZZZZZZZZZZZZZZZZ", "tests/plugins/aws_key_test.py"),
        (f'aws_access_key = "{AWS_EXAMPLE_SECRET}"', "tests/plugins/aws_key_test.py"),
        ("aws_access_key = 'AKIAIOSFODNN7EXAMPLE'", "test_data/each_secret.py"),
        ("AKIATESTTESTTESTTEST", "test_data/config.yaml"),
    ],
    "azure-key": [
        ("AccountKey=lJzRc1YdHaAA2KCNJJ1tkYwF/+mKK6Ygw0NGe170Xu592euJv2wYUtBlV8z+qnlcNQSnIYVTkLWntUO1F8j8rQ==",
         "tests/plugins/azure_storage_key_test.py"),
    ],
    "github-token": [
        ("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", "tests/plugins/github_token_test.py"),
    ],
    "gitlab-token": [(t, "tests/plugins/gitlab_token_test.py") for t in [
        "glpat-hellOworld380_testin",
        "gldt-HwllOuhfw-wu0rlD_yep",
        "glsoat-PREfix_helloworld380_testin_pretty_long_token_long",
        "GR1348941PREfix_helloworld380",
        "GR1348941PREfix_helloworld380_testin_pretty_long_token_long",
        "glcbt-helloworld380_testin",
        "glimt-my-tokens_are-correctAB38",
        "glptt-Need5_T00-be-exactly-40-chars--ELse_fail",
        "glagent-Need5_T00-bee-longer-than-50_chars-or-else-failING",
        "glagent-Need5_T00-bee-longer-than-50_chars-or-else-failING-still_OK",
        "gloas-checking_Length-Is-_exactly_64--checking_Length-Is-_exactly_64--",
    ]],
    "slack-token": [(t, "tests/plugins/slack_test.py") for t in [
        "xoxp-523423-234243-234233-e039d02840a0b9379c",
        "xoxo-523423-234243-234233-e039d02840a0b9379c",
        "xoxs-523423-234243-234233-e039d02840a0b9379c",
        "xoxa-511111111-31111111111-3111111111111-e039d02840a0b9379c",
        "xoxa-2-511111111-31111111111-3111111111111-e039d02840a0b9379c",
        "xoxr-523423-234243-234233-e039d02840a0b9379c",
        "xoxb-34532454-e039d02840a0b9379c",
        "https://hooks.slack.com/services/Txxxxxxxx/Bxxxxxxxx/xxxxxxxxxxxxxxxxxxxxxxxx",
    ]],
    "stripe-key": [
        ("sk_live_ReTllpYQYfIZu2Jnf2lAPFjD", "tests/plugins/stripe_key_test.py"),
        ("rk_live_5TcWfjKmJgpql9hjpRnwRXbT", "tests/plugins/stripe_key_test.py"),
    ],
    "openai-key": [
        ("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", "tests/plugins/openai_test.py"),
        ("sk-proj-Xi8tdMjHV6pmbBbwilTeT3BlbkFJ3UDnpdEwNNm6wVBpYM0o", "tests/plugins/openai_test.py"),
    ],
    "jwt": [(t, "tests/plugins/jwt_test.py") for t in [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MD"
        "IyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "eyJ0eXAiOiJKV1QiLA0KImFsZyI6IkhTMjU2In0.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5"
        "MDIyfQ",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJuYW1lIjoiSm9lIiwKInN0YXR1cyI6ImVtcGxveWVlIgp9",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IsWww6HFkcOtIMOWxZHDqcOoIiwiaWF0Ij"
        "oxNTE2MjM5MDIyfQ.k5HibI_uLn_RTuPcaCNkaVaQH2y5q6GvJg8GPpGMRwQ",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MD"
        "IyfQ",
    ]],
    "url-password": [
        ("https://username:password@yelp.com", "tests/plugins/basic_auth_test.py"),
        ("http://username:whywouldyouusehttpforpasswords@example.com", "test_data/each_secret.py"),
    ],
    "password": [
        (f'password = "{KW_WHITES}"', "tests/plugins/keyword_test.py"),
        (f'password_super_secure = "{KW_WHITES}"', "tests/plugins/keyword_test.py"),
        (f'my_password_super_secure = "{KW_WHITES}"', "tests/plugins/keyword_test.py"),
        (f"api_key: '{KW_WHITES}'", "tests/plugins/keyword_test.py"),
        (f"apikey = {KW_COMMON}", "tests/plugins/keyword_test.py"),
        (f"db_pass: {KW_COMMON},", "tests/plugins/keyword_test.py"),
        (f"secrete = {KW_LETTER}", "tests/plugins/keyword_test.py"),
        (f'if (db_pass !== "{KW_COMMON}") {{', "tests/plugins/keyword_test.py"),
        (f'password => "{KW_COMMON}"', "tests/plugins/keyword_test.py"),
        (f'std::string secret("{KW_COMMON}");', "tests/plugins/keyword_test.py"),
        (f'apikey_myservice: "{KW_COMMON}"', "tests/plugins/keyword_test.py"),
        (f'if ("{KW_COMMON}" == my_super_password) {{', "tests/plugins/keyword_test.py"),
        ("password = 123456789a1234", "test_data/config.ini"),
    ],
    "high-entropy": [
        ('"2b00042f7481c7b056c4b410d28f33cf"', "tests/plugins/high_entropy_strings_test.py"),
        ("'c3VwZXIgbG9uZyBzdHJpbmcgc2hvdWxkIGNhdXNlIGVub3VnaCBlbnRyb3B5'",
         "tests/plugins/high_entropy_strings_test.py"),
        ("'I6FwzQZFL9l-44nviI1F04OTmorMaVQf9GS4Oe07qxL_vNkW6CRas4Lo42vqJMT0M6riJfma_f-pTAuoX2U='",
         "tests/plugins/high_entropy_strings_test.py"),
        ("'c2VjcmV0IG1lc3NhZ2Ugc28geW91J2xsIG5ldmVyIGd1ZXNzIG15IHBhc3N3b3Jk'", "test_data/each_secret.py"),
        ("'8b1118b376c313ed420e5133ba91307817ed52c2'", "test_data/each_secret.py"),
        ("'YW1pYWx3YXlzZ2VuZXJhdGluZ3BheWxvYWRzd2hlbmltaHVuZ3J5b3JhbWlhbHdheXNodW5ncnk'",
         "test_data/each_secret.py"),
        ('"gX69YO4CvBsVjzAwYxdGyDd30t5+9ez31gKATtj4"', "test_data/config.env"),
        ('"ToCynx5Se4e2PtoZxEhW7lUJcOX15c54"', "test_data/config.md"),
        ("'f6CGV4aMM9zedoh3OUNbSakBymo7yplB'", "test_data/files/file_with_secrets.py"),
    ],
    "service-token": [
        ("//registry.npmjs.org/:_authToken=743b294a-cd03-11ec-9d64-0242ac120002", "tests/plugins/npm_test.py"),
        ("//registry.npmjs.org/:_authToken=346a14f2-a672-4668-a892-956a462ab56e", "tests/plugins/npm_test.py"),
        ("//registry.npmjs.org/:_authToken=npm_xxxxxxxxxxx", "tests/plugins/npm_test.py"),
        ("pypi-AgEIcHlwaS5vcmcCJDU3OTM1MjliLWIyYTYtNDEwOC05NzRkLTM0MjNiNmEwNWIzYgACF1sxLFsitesttestbWluaW1hbC1wcm9"
         "qZWN0Il1dAAIsWzIsWyJjYWY4OTAwZi0xNDMwLTRiYQstYmFmMi1mMDE3OGIyNWZhNTkiXV0AAAYgh2UINPjWBDwT0r3tQ1o5oZyswcj"
         "N0-IluP6z34SX3KM", "tests/plugins/pypi_token_test.py"),
        ("pypi-AgENdGVzdC5weXBpLm9yZwIkN2YxOWZhOWEtY2FjYS00MGZhLTj2MGEtODFjMnE2MjdmMzY0AAIqWzMsImJlM2FiOWI5LTRmYUTn"
         "NEg4ZS04Mjk0LWFlY2Y2NWYzNGYzNyJdAAAGIMb5Hb8nVvhcAizcVVzA-bKKnwN7Pe0RmgPRCvrPwyJf",
         "tests/plugins/pypi_token_test.py"),
        ("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", "tests/plugins/sendgrid_test.py"),
        ("SKxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "tests/plugins/twilio_test.py"),
        ("ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "tests/plugins/twilio_test.py"),
        ("MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs", "tests/plugins/discord_test.py"),
        ("Nzk5MjgxNDk0NDc2NDU1OTg3.YABS5g.2lmzECVlZv3vv6miVnUaKPQi2wI", "tests/plugins/discord_test.py"),
        ("MZ1yGvKTjE0rY0cV8i47CjAa.uRHQPq.Xb1Mk2nEhe-4iUcrGOuegj57zMC", "tests/plugins/discord_test.py"),
        ("OTUyNED5MDk2MTMxNzc2MkEz.YjESug.UNf-1GhsIG8zWT409q2C7Bh_zWQ", "tests/plugins/discord_test.py"),
        ("MTAyOTQ4MTN5OTU5MTDwMEcxNg.GSwJyi.sbaw8msOR3Wi6vPUzeIWy_P0vJbB0UuRVjH8l8", "tests/plugins/discord_test.py"),
        ("110201543:AAHdqTcvCH1vGWJxfSe1ofSAs0K5PALDsaw", "tests/plugins/telegram_token_test.py"),
        ("7213808860:AAH1bjqpKKW3maRSPAxzIU-0v6xNuq2-NjM", "tests/plugins/telegram_token_test.py"),
        ("343ea45721923ed956e2b38c31db76aa-us30", "tests/plugins/mailchimp_key_test.py"),
        ("a2937653ed38c31a43ea46e2b19257db-us2", "tests/plugins/mailchimp_key_test.py"),
        ("square_oauth = sq0csp-ABCDEFGHIJK_LMNOPQRSTUVWXYZ-0123456789\\abcd", "tests/plugins/square_oauth_test.py"),
        ("X-JFrog-Art-Api: AKCxxxxxxxxxx", "tests/plugins/artifactory_test.py"),
        ("artif-key:AP6xxxxxxxxxx", "tests/plugins/artifactory_test.py"),
        ("artifactoryx:_password=AKCxxxxxxxxxx", "tests/plugins/artifactory_test.py"),
        (f"ibm-cloud_api_key: {CLOUD_IAM_KEY}", "tests/plugins/ibm_cloud_iam_test.py"),
        (f'"iam_api_key" : "{CLOUD_IAM_KEY}"', "tests/plugins/ibm_cloud_iam_test.py"),
        (f"IBMCLOUDIAMAPIKEY={CLOUD_IAM_KEY}", "tests/plugins/ibm_cloud_iam_test.py"),
        (f'"secret_access_key": "{COS_SECRET}"', "tests/plugins/ibm_cos_hmac_test.py"),
        (f'COS_HMAC_SECRET_ACCESS_KEY = "{COS_SECRET}"', "tests/plugins/ibm_cos_hmac_test.py"),
        (f"https://testy_-test:{CL_PW}@testy_-test.cloudant.com", "tests/plugins/cloudant_test.py"),
        (f'cloudant_key = "{CL_API_KEY}"', "tests/plugins/cloudant_test.py"),
        (f"cloudant_pw='{CL_PW}'", "tests/plugins/cloudant_test.py"),
        (f'--softlayer-api-key "{SL_TOKEN}"', "tests/plugins/softlayer_test.py"),
        (f"http://api.softlayer.com/soap/v3.1/{SL_TOKEN}", "tests/plugins/softlayer_test.py"),
        (f"softlayer_api_key: {SL_TOKEN}", "tests/plugins/softlayer_test.py"),
    ],
}

# detect-secrets plugin whose regex each generated value follows (named in `source`).
PLUGIN = {
    "private-key": "PrivateKeyDetector", "aws-key": "AWSKeyDetector", "azure-key": "AzureStorageKeyDetector",
    "github-token": "GitHubTokenDetector", "gitlab-token": "GitLabTokenDetector", "slack-token": "SlackDetector",
    "stripe-key": "StripeDetector", "openai-key": "OpenAIDetector", "jwt": "JwtTokenDetector",
    "url-password": "BasicAuthDetector", "password": "KeywordDetector",
    "high-entropy": "Base64HighEntropyString/HexHighEntropyString",
}

# --------------------------------------------------------------------------------------------------
# Note templates. {s} is the secret (token or code line); the text around it never holds another kind.

# For bare tokens: the token stands between spaces (Artifactory's regex needs whitespace, '"' or the
# end after it, so no template glues punctuation to {s}).
TOKEN_NOTES = [
    "The {proj} deploy key is {s} and it should be rotated in {month}",
    "{name} sent over the {proj} token: {s} (expires end of {month})",
    "Note to self: {s} is the {proj} one, do not paste it in chat",
    "CI variable for the {proj} job = {s} , set on {day}",
    "Found {s} in an old screenshot from {name}, revoke it",
    "{proj} token -> {s} \nadded by {name} on {day}",
    "Put {s} in the password manager under {proj} before {day}",
    "{proj}: {s}",
    "Temporary credential from {name} for the {proj} work: {s} (valid until {day})",
    "Remember to revoke {s} after the {proj} migration in {month}",
]
# For code lines copied from a config file.
LINE_NOTES = [
    "Copied from the {proj} config: {s}",
    "{s}\n^ this line is in the old {proj} settings, move it to the vault",
    "Line {n} of the {proj} env file reads {s} , ask {name} before changing it",
    "From {name}'s setup notes for the {proj}:\n{s}",
    "{proj} config snippet (do not commit):\n    {s}",
    "Needed this on {day} to get the {proj} running locally: {s}",
]
URL_NOTES = [
    "Staging DB url {s} , don't paste it in chat",
    "{name} set up backups to {s} on {day}",
    "The {proj} connection string is {s}",
    "Old {proj} mirror at {s} still works, remove it in {month}",
    "Connect with {s} (read-only user, ask {name} for write access)",
    "Fetch the nightly {proj} dump from {s}",
    "{proj} datasource: {s}",
    "Remember to revoke {s} after the {proj} migration in {month}",
]
WEBHOOK_NOTES = [
    "Slack webhook for the {proj} alerts: {s}",
    "{name} set up {s} to post build results, rotate in {month}",
    "Incoming webhook {s} goes to the {proj} channel",
    "Remember to revoke {s} after the {proj} migration in {month}",
]
PRIVATE_KEY_NOTES = [
    "Deploy key for the {proj} box (do not share):\n{s}",
    "{s}\n^ old jump host key from {name}, revoked in {month}?",
    "SSH key {name} used for the {proj} server:\n\n{s}\n",
    "Backup of the {proj} signing key, {day}:\n{s}",
    "Pasting the key here so I don't lose it: {s}",
]
PERSONAL_NOTES = {
    "email": [
        "{who}'s email is {v}", "Send the invoice to {v} by {day}", "New contact: {who} <{v}>",
        "{v} is the address for the book club newsletter", "Ping {v} about the lease renewal in {month}",
        "Reply to {v} with the photos from {day}", "The landlord writes from {v}",
        "Signed up for the running club with {v}", "mailto:{v} for the plumber quote",
        "{who} changed her address to {v}",
    ],
    "phone": [
        "Call {who} on {v} after 6pm", "Dentist's number: {v}", "{who}'s mobile is {v}",
        "WhatsApp {v} for the keys on {day}", "Hotel front desk {v}, ask for late checkout",
        "Plumber {who}: {v}", "If the flight is late call {v}", "{who} has a new number, {v}",
        "Emergency contact for the trip is {v} ({who})", "The caterer's phone is {v}",
    ],
    "card": [
        "Visa for online orders: {v}, exp 04/28", "The company card is {v}",
        "{who} lent me her card {v} for the concert tickets", "Card on file with the gym: {v}",
        "Paid the deposit with {v} on {day}", "Travel card number {v} (expires 11/27)",
        "New debit card arrived: {v}", "Use {v} for the {month} subscription renewal",
    ],
    "iban": [
        "Rent goes to {who}, IBAN {v}", "Transfer the deposit to {v} (ref: flat 3B)",
        "My salary account: {v}", "IBAN for the plumber: {v}", "{who}'s bank details: {v}",
        "Refund should go to {v} before the end of {month}", "Club membership fee to {v}, 45 EUR a year",
        "School trip payment, IBAN {v}, reference class 4C",
    ],
}


def wrap(g: Gen, templates: list[str], s: str) -> str:
    return g.fill(g.pick(templates), s=s, n=str(g.int(3, 80)))


# --------------------------------------------------------------------------------------------------
# Generators, each in the exact format of a detect-secrets plugin regex (detect-secrets 1.5.0).

def gen_private_key(g: Gen) -> str:
    kind = g.pick(["RSA", "RSA", "PKCS8", "OPENSSH", "OPENSSH", "EC", "DSA", "PGP", "SSH2"])
    if kind == "SSH2":
        body = base64.b64encode(b"?o\xf9\xeb" + g.bytes(g.int(150, 300))).decode()
        lines = [body[i:i + 70] for i in range(0, len(body), 70)]
        return ("---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: \"" + g.pick(NAMES).lower() + "@laptop\"\n"
                + "\n".join(lines) + "\n---- END SSH2 ENCRYPTED PRIVATE KEY ----")
    prefix, label, width = {
        "RSA": (b"\x30\x82\x04\xa4\x02\x01\x00\x02\x82\x01\x01\x00", "RSA PRIVATE KEY", 64),
        "PKCS8": (b"\x30\x82\x04\xbd\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01\x05\x00",
                  "PRIVATE KEY", 64),
        "OPENSSH": (b"openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none", "OPENSSH PRIVATE KEY", 70),
        "EC": (b"\x30\x77\x02\x01\x01\x04\x20", "EC PRIVATE KEY", 64),
        "DSA": (b"\x30\x82\x01\xbb\x02\x01\x00\x02\x81\x81\x00", "DSA PRIVATE KEY", 64),
        "PGP": (b"\x95\x03\x98\x04", "PGP PRIVATE KEY BLOCK", 64),
    }[kind]
    n = {"EC": 112, "DSA": 420}.get(kind, g.int(180, 560))
    body = base64.b64encode(prefix + g.bytes(n)).decode()
    lines = [body[i:i + width] for i in range(0, len(body), width)]
    head = "\n" if kind == "PGP" else ""  # an armour header is followed by a blank line
    if g.int(0, 5) == 0:  # pasted onto one line, as chat apps do
        return f"-----BEGIN {label}----- {''.join(lines)} -----END {label}-----"
    return f"-----BEGIN {label}-----\n{head}" + "\n".join(lines) + f"\n-----END {label}-----"


def gen_aws(g: Gen) -> tuple[str, bool]:
    """(token or line, is_line). Key ids use AWS's base32 alphabet; secret keys follow the second regex."""
    if g.int(0, 3) == 0:
        secret = g.s(ALNUM + "/+", 40)
        line = g.pick([
            'aws_access_key = "{}"', "aws key: '{}' ({proj})", 'our aws token is "{}"',
            "aws_session_token='{}'", 'aws pass "{}" (read only user)',
        ])
        return line.replace("{}", secret).replace("{proj}", g.pick(PROJECTS)), True
    prefix = g.pick(["AKIA", "AKIA", "AKIA", "ASIA", "ABIA", "ACCA", "A3T" + g.s(string.ascii_uppercase, 1)])
    return prefix + g.s(string.ascii_uppercase + "234567", 20 - len(prefix)), False


def gen_azure(g: Gen) -> str:
    key = base64.b64encode(g.bytes(64)).decode()
    account = g.pick(["mystorage", "backupsprod", "photosarchive", "memosdata", "devlogs"]) + str(g.int(1, 99))
    return g.pick([
        f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};EndpointSuffix=core.windows.net",
        f"AccountName={account};AccountKey={key}",
        f"AccountKey={key}",
    ])


def base62(n: int, width: int) -> str:
    alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = alphabet[r] + out
    return out.rjust(width, "0")


def gen_github(g: Gen) -> str:
    """GitHub's format: prefix, 30 random base62 characters, CRC32 of them in 6 base62 characters."""
    body = g.s(ALNUM, 30)
    return g.pick(["ghp", "ghp", "ghp", "gho", "ghu", "ghs", "ghr"]) + "_" + body + base62(zlib.crc32(body.encode()), 6)


def gen_gitlab(g: Gen) -> str:
    kind = g.pick(["glpat", "glpat", "glpat", "glpat", "gldt", "glft", "glsoat", "glrt", "GR", "glcbt", "glimt",
                   "glptt", "glagent", "gloas"])
    tok = ALNUM + "_-"
    if kind == "GR":
        return "GR1348941" + g.s(ALNUM + "_-", 20)
    if kind == "glcbt":
        return "glcbt-" + g.s(HEX, 2) + "_" + g.s(ALNUM, 20)
    if kind == "glimt":
        return "glimt-" + g.s(tok, 25)
    if kind == "glptt":
        return "glptt-" + g.s(HEX, 40)
    if kind == "glagent":
        return "glagent-" + g.s(tok, 50)
    if kind == "gloas":
        return "gloas-" + g.s(tok, 64)
    return kind + "-" + g.s(ALNUM, 20) if g.int(0, 2) else kind + "-" + g.s(tok, g.int(21, 40)) + g.s(ALNUM, 1)


def gen_slack(g: Gen) -> str:
    kind = g.pick(["xoxb", "xoxb", "xoxp", "xoxa", "xoxr", "xoxs", "hook", "hook"])
    digits = lambda n: str(g.int(1, 9)) + g.s(string.digits, n - 1)  # noqa: E731
    if kind == "hook":
        return (f"https://hooks.slack.com/services/T{g.s(UPPER_ALNUM, g.int(8, 10))}/B{g.s(UPPER_ALNUM, g.int(8, 10))}/"
                f"{g.s(ALNUM, 24)}")
    if kind == "xoxb":
        return f"xoxb-{digits(g.int(10, 12))}-{digits(13)}-{g.s(ALNUM, 24)}"
    if kind == "xoxp":
        return f"xoxp-{digits(12)}-{digits(12)}-{digits(13)}-{g.s(HEX, 32)}"
    if kind == "xoxa":
        return f"xoxa-2-{digits(12)}-{digits(12)}-{digits(13)}-{g.s(HEX, 32)}"
    return f"{kind}-{digits(12)}-{digits(12)}-{digits(13)}-{g.s(LOWER_ALNUM, 32)}"


def gen_stripe(g: Gen) -> str:
    prefix = g.pick(["sk_live_", "sk_live_", "sk_live_", "rk_live_"])
    if g.int(0, 2) == 0:  # current keys are long: account part then secret part
        return prefix + "51" + g.s(ALNUM, 97)
    return prefix + g.s(ALNUM, 24)


def gen_openai(g: Gen) -> str:
    """sk-[A-Za-z0-9-_]*[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}: the 20 characters either side of the
    marker are alphanumeric; a project / service-account key has more before and after."""
    marker = "T3BlbkFJ"
    kind = g.pick(["legacy", "proj", "proj", "svcacct"])
    if kind == "legacy":
        return "sk-" + g.s(ALNUM, 20) + marker + g.s(ALNUM, 20)
    lead = "sk-proj-" if kind == "proj" else "sk-svcacct-"
    return lead + g.s(B64URL, 54) + g.s(ALNUM, 20) + marker + g.s(ALNUM, 20) + g.s(B64URL, 54)


def gen_jwt(g: Gen) -> str:
    alg = g.pick(["HS256", "HS256", "RS256", "ES256", "HS512"])
    header: dict = {"alg": alg, "typ": "JWT"}
    if alg != "HS256":
        header["kid"] = g.s(HEX, 16)
    if g.int(0, 1):
        header = {"typ": "JWT", **{k: v for k, v in header.items() if k != "typ"}}
    iat = g.int(1_650_000_000, 1_735_000_000)
    payload: dict = {"sub": g.pick([str(g.int(1000, 99999999)), g.uuid4()]),
                     "name": f"{g.pick(NAMES)} {g.pick(SURNAMES)}", "iat": iat}
    if g.int(0, 1):
        payload["exp"] = iat + g.pick([900, 3600, 86400])
    if g.int(0, 1):
        payload["iss"] = g.pick(["https://auth.example.com/", "memos", "https://login.example.org"])
    if g.int(0, 2) == 0:
        payload["role"] = g.pick(["admin", "editor", "viewer", "service"])
    if g.int(0, 2) == 0:
        payload["scope"] = g.pick(["read write", "openid profile", "repo:read"])
    sig = g.bytes({"HS256": 32, "HS512": 64, "RS256": 256, "ES256": 64}[alg])
    enc = lambda d: b64url(json.dumps(d, separators=(",", ":")).encode())  # noqa: E731
    return f"{enc(header)}.{enc(payload)}.{b64url(sig)}"


def gen_url_password(g: Gen) -> str:
    user = g.pick(["admin", "deploy", "app_user", "backup", "ci", "grafana", "root", g.pick(NAMES).lower()])
    pw = g.s(ALNUM, g.int(8, 14)) if g.int(0, 1) else (
        g.pick(["Blue", "Tiger", "Maple", "Orbit", "Cobalt", "River"]) + g.pick(["-", ".", "_", "~", ""])
        + g.pick(["Falcon", "Lamp", "Stone", "Wave", "Pixel"]) + str(g.int(10, 9999)))
    scheme, host, tail = g.pick([
        ("https", "dashboard.example.com", "/login"), ("http", "nas.home.example.net:8080", "/"),
        ("postgres", "db.staging.example.com:5432", "/app"), ("postgresql", "localhost:5432", "/memos"),
        ("mysql", "mysql.internal.example.org:3306", "/wiki"), ("redis", "cache.example.net:6379", "/0"),
        ("amqp", "rabbit.example.com:5672", "/vhost"), ("mongodb+srv", "cluster0.abcde.mongodb.net", "/test"),
        ("ftp", "ftp.example.org", "/uploads"), ("smtp", "mail.example.com:587", ""),
        ("https", "registry.example.io", "/v2/"), ("http", "192.168.1.20:8123", "/"),
    ])
    return f"{scheme}://{user}:{pw}@{host}{tail}"


WORDS = ["horse", "battery", "staple", "maple", "orbit", "falcon", "violet", "ember", "tundra", "pepper",
         "glacier", "mango", "cobalt", "lantern", "nimbus", "quartz", "saffron", "willow"]


def gen_password_value(g: Gen) -> str:
    k = g.int(0, 4)
    if k == 0:
        return g.pick(WORDS).capitalize() + g.pick(WORDS).capitalize() + str(g.int(1, 999)) + g.pick("!#%&*?")
    if k == 1:
        return "-".join(g.pick(WORDS) for _ in range(4))
    if k == 2:
        w = g.pick(WORDS)
        return w[0].upper() + w[1:].replace("a", "4").replace("e", "3").replace("o", "0") + str(g.int(10, 99))
    if k == 3:
        return g.pick(["hunter", "Summer", "Winter", "Welcome", "Letmein"]) + str(g.int(2, 2025)) + g.pick(["", "!", "xyz"])
    return g.s(ALNUM, g.int(16, 32))


def gen_password_line(g: Gen) -> str:
    v = gen_password_value(g)
    return g.pick([
        'password = "{v}"', "db_password: {v}", 'api_key="{v}"', "DB_PASS={v}", '"password": "{v}"',
        "secret: '{v}'", 'passwd := "{v}"', 'client_secret = "{v}"', "ADMIN_PASSWORD={v}",
        'smtp_password => "{v}"', "MYSQL_ROOT_PASSWORD: {v}", "pwd = '{v}'", 'auth_key: "{v}"',
        "wifi_password = {v}", 'my_secret_token = "{v}"', "--password={v}",
    ]).format(v=v)


def gen_high_entropy(g: Gen) -> tuple[str, str]:
    """A quoted value above the plugin's default entropy limit (hex 3.0, base64 4.5), and that plugin."""
    while True:
        if g.int(0, 1):
            v, plugin = g.s(HEX, g.pick([32, 40, 48, 64])), "HexHighEntropyString"
            if hex_entropy(v) > 3.0:
                break
        else:
            alphabet = g.pick([ALNUM + "+/", ALNUM + "-_"])
            v, plugin = g.s(alphabet, g.pick([24, 32, 40, 44, 56, 64])), "Base64HighEntropyString"
            if alphabet.endswith("+/") and g.int(0, 1):
                v = v[:-2] + "=="
            if shannon(v, B64_CHARSET) > 4.5:
                break
    q = g.pick(['"', "'"])
    return q + v + q, plugin


HIGH_ENTROPY_NOTES = [
    "token {s} for the {proj} webhook, rotate in {month}",
    "The build cache signature is {s}",
    "HMAC for the {proj} callback: {s}",
    "session cookie {s} expires {day}",
    "{name} gave me the license string {s} for the pro plan",
    "X-Signature: {s}",
    "recovery code {s} (printed copy in the drawer)",
    "Webhook signing value ({proj}) = {s}",
    "{proj} bearer {s}",
    "Use {s} as the encryption salt for the {proj} exports",
]


def gen_service(g: Gen, service: str) -> str:
    if service == "npm":
        tok = "npm_" + g.s(ALNUM, 36) if g.int(0, 2) else g.uuid4()
        return g.pick(["//registry.npmjs.org/:_authToken={t}", "//npm.pkg.github.com/:_authToken={t}",
                       "//registry.npmjs.org/:_authToken= {t}"]).format(t=tok)
    if service == "pypi":
        caveat = json.dumps([1, [g.pick(["memos-cli", "tiny-utils", "notes-sync", "my-project"])]],
                            separators=(",", ":")).encode()
        mac = (b"\x02\x01\x08pypi.org\x02\x24" + g.uuid4().encode() + b"\x00\x02" + bytes([len(caveat)]) + caveat
               + b"\x00\x00\x06\x20" + g.bytes(32))
        return "pypi-" + b64url(mac)
    if service == "sendgrid":
        return "SG." + g.s(B64URL, 22) + "." + g.s(B64URL, 43)
    if service == "twilio":
        return g.pick(["AC", "SK"]) + g.s(HEX, 32)
    if service == "discord":
        first = b64url(str(g.int(10**17, 12 * 10**17)).encode())[:g.pick([24, 24, 26])]
        return first + "." + g.s(B64URL, 6) + "." + g.s(B64URL, g.pick([27, 38]))
    if service == "telegram":
        return f"{g.int(10**7, 9_999_999_999)}:AA{g.s(B64URL, 33)}"
    if service == "mailchimp":
        return f"{g.s(HEX, 32)}-us{g.int(1, 21)}"
    if service == "square":
        return "sq0csp-" + g.s(B64URL, 43)
    if service == "artifactory":
        return g.pick(["X-JFrog-Art-Api: {t}", "artifactory api key {t}", "JFROG_TOKEN={t}"]).format(
            t=g.pick(["AKCp8", "AKCp5", "AP" + g.pick("0123456789ABCDEF")]) + g.s(ALNUM, g.pick([10, 20, 68])))
    if service == "ibm-iam":
        return g.pick(["ibm_cloud_iam_api_key: {t}", "IBM_API_KEY={t}", '"cloud_iam_api_key":"{t}"',
                       "ibmcloud_apikey = {t}"]).format(t=g.s(ALNUM + "_-", 43) + g.s(ALNUM, 1))
    if service == "ibm-cos":
        return g.pick(['ibm_cos_secret_access_key = "{t}"', "cos_hmac_secret_key: {t}",
                       '"secret_access_key": "{t}"']).format(t=g.s(HEX, 48))
    if service == "cloudant":
        return g.pick(["cloudant_key = {k}", 'cloudant_apikey: "{k}"', "cloudant_pw={p}", 'clou_pass = "{p}"']).format(
            k=g.s(string.ascii_lowercase, 24), p=g.s(HEX, 64))
    if service == "softlayer":
        t = g.s(LOWER_ALNUM, 64)
        return g.pick(["softlayer_api_key: {t}", "SL_API_KEY={t}", "--softlayer-api-key {t}",
                       "https://api.softlayer.com/soap/v3/{t}"]).format(t=t)
    raise ValueError(service)


SERVICES = ["npm", "pypi", "sendgrid", "twilio", "discord", "telegram", "mailchimp", "square", "artifactory",
            "ibm-iam", "ibm-cos", "cloudant", "softlayer"]
SERVICE_PLUGIN = {"npm": "NpmDetector", "pypi": "PypiTokenDetector", "sendgrid": "SendGridDetector",
                  "twilio": "TwilioKeyDetector", "discord": "DiscordBotTokenDetector",
                  "telegram": "TelegramBotTokenDetector", "mailchimp": "MailchimpDetector",
                  "square": "SquareOAuthDetector", "artifactory": "ArtifactoryDetector",
                  "ibm-iam": "IbmCloudIamDetector", "ibm-cos": "IbmCosHmacDetector",
                  "cloudant": "CloudantDetector", "softlayer": "SoftlayerDetector"}
SERVICE_TEST = {s: f"tests/plugins/{f}_test.py" for s, f in [
    ("npm", "npm"), ("pypi", "pypi_token"), ("sendgrid", "sendgrid"), ("twilio", "twilio"), ("discord", "discord"),
    ("telegram", "telegram_token"), ("mailchimp", "mailchimp_key"), ("square", "square_oauth"),
    ("artifactory", "artifactory"), ("ibm-iam", "ibm_cloud_iam"), ("ibm-cos", "ibm_cos_hmac"),
    ("cloudant", "cloudant"), ("softlayer", "softlayer")]}
LINE_SERVICES = {"npm", "artifactory", "ibm-iam", "ibm-cos", "cloudant", "softlayer"}


# --------------------------------------------------------------------------------------------------
# Personal data

def gen_email(g: Gen) -> str:
    first, last = g.pick(NAMES).lower(), g.pick(SURNAMES).lower().replace("'", "")
    local = g.pick([f"{first}.{last}", f"{first}{last[0]}", f"{first}_{last}", f"{first[0]}{last}{g.int(1, 99)}",
                    f"{first}+{g.pick(['news', 'shop', 'work', 'travel'])}", f"{last}.{first}"])
    domain = g.pick(["example.org", "example.com", "example.net", "mail.example.com", "example.co.uk",
                     "uni.example.edu", "example.de", "team.example.io"])
    return f"{local}@{domain}"


def gen_phone(g: Gen) -> str:
    d = lambda n: g.s(string.digits, n)  # noqa: E731
    cc, parts = g.pick([
        ("44", ["20", "7946", "0" + d(3)]),                       # UK drama range 020 7946 0xxx
        ("44", ["7" + g.pick("4579") + d(2), d(6)]),              # UK mobile
        ("1", [g.pick(["212", "415", "617", "312", "206", "512", "303", "646", "202", "604", "416"]), "555",
               "01" + d(2)]),                                     # NANP fictional 555-01xx
        ("61", ["491", "57" + d(1), d(3)]),                       # AU fictional mobiles 0491 57x xxx
        ("49", ["30", g.pick("2345689") + d(6)]),                 # Berlin
        ("49", ["151", g.pick("2345") + d(7)]),                   # DE mobile
        ("33", [g.pick("12345"), d(2), d(2), d(2), d(2)]),       # FR geographic
        ("33", ["6", d(2), d(2), d(2), d(2)]),                   # FR mobile
        ("34", ["6" + d(2), d(3), d(3)]),                         # ES mobile
        ("39", ["06", g.pick("3456789") + d(3), d(4)]),           # Rome
        ("31", ["20", g.pick("2345678") + d(2), d(4)]),           # Amsterdam
        ("353", ["1", g.pick("2345678") + d(2), d(4)]),           # Dublin
        ("41", ["44", g.pick("2345678") + d(2), d(2), d(2)]),    # Zurich
        ("81", ["3", g.pick("3456") + d(3), d(4)]),               # Tokyo
        ("91", [g.pick("6789") + d(4), d(5)]),                    # IN mobile
        ("55", ["11", "9" + d(4), d(4)]),                         # Sao Paulo mobile
        ("27", ["21", g.pick("3456789") + d(2), d(4)]),           # Cape Town
        ("46", ["8", g.pick("5678") + d(2), d(3), d(2)]),         # Stockholm
        ("48", ["22", g.pick("5678") + d(2), d(2), d(2)]),        # Warsaw
    ])
    style = g.int(0, 5)
    if style == 0:
        return f"+{cc}" + "".join(parts)
    if style == 1:
        return f"+{cc}-" + "-".join(parts)
    if style == 2 and cc == "1":
        return f"+1 ({parts[0]}) {parts[1]}-{parts[2]}"
    if style == 3 and cc not in ("1", "91", "55"):
        return f"+{cc} (0){' '.join(parts)}" if cc in ("44", "49", "31", "41", "353") else f"+{cc} " + " ".join(parts)
    return f"+{cc} " + " ".join(parts)


PUBLISHED_TEST_CARDS = ["4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556",
                        "5555555555554444", "5105105105105100", "2223003122003222", "378282246310005",
                        "371449635398431", "6011111111111117", "6011000990139424", "3566002020360505",
                        "30569309025904", "38520000023237", "6200000000000005"]


def gen_card_number(g: Gen) -> str:
    prefix, length = g.pick([
        ("4", 16), ("4", 16), ("4", 16), (str(g.int(51, 55)), 16), (str(g.int(2221, 2720)), 16),
        (g.pick(["34", "37"]), 15), ("6011", 16), ("65", 16), (str(g.int(3528, 3589)), 16),
        ("36", 14), ("62", g.pick([16, 19])),
    ])
    return luhn_complete(prefix + g.s(string.digits, length - len(prefix) - 1))


def format_card(g: Gen, num: str) -> str:
    sep = g.pick([" ", " ", "-", ""])
    if len(num) == 15:
        groups = [num[:4], num[4:10], num[10:]]
    elif len(num) == 14:
        groups = [num[:4], num[4:10], num[10:]]
    else:
        groups = [num[i:i + 4] for i in range(0, len(num), 4)]
    return sep.join(groups)


def fr_rib_key(bank: str, branch: str, account: str) -> str:
    return f"{97 - (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97:02d}"


def es_checks(bank: str, branch: str, account: str) -> str:
    w = [1, 2, 4, 8, 5, 10, 9, 7, 3, 6]

    def one(digits: str) -> str:
        d = 11 - sum(int(c) * k for c, k in zip(digits, w, strict=True)) % 11
        return str({11: 0, 10: 1}.get(d, d))
    return one("00" + bank + branch) + one(account)


def gen_iban(g: Gen) -> str:
    d = lambda n: g.s(string.digits, n)  # noqa: E731
    cc = g.pick(["GB", "GB", "DE", "DE", "FR", "ES", "NL", "IE", "CH", "AT", "PL", "LU", "PT"])
    if cc == "GB":
        bban = g.pick(["NWBK", "BARC", "LOYD", "HBUK", "MIDL", "WEST"]) + d(6) + d(8)
    elif cc == "DE":
        bban = d(8) + d(10)
    elif cc == "FR":
        bank, branch, account = d(5), d(5), d(11)
        bban = bank + branch + account + fr_rib_key(bank, branch, account)
    elif cc == "ES":
        bank, branch, account = d(4), d(4), d(10)
        bban = bank + branch + es_checks(bank, branch, account) + account
    elif cc == "NL":
        bban = g.pick(["ABNA", "INGB", "RABO", "TRIO", "SNSB"]) + d(10)
    elif cc == "IE":
        bban = g.pick(["AIBK", "BOFI", "IPBS"]) + d(6) + d(8)
    elif cc == "CH":
        bban = d(5) + d(12)
    elif cc == "AT":
        bban = d(5) + d(11)
    elif cc == "PL":
        bban = d(8) + d(16)
    elif cc == "LU":
        bban = d(3) + d(13)
    else:  # PT: NIB check digits are 98 - (first 19 digits * 100 mod 97)
        body = d(19)
        bban = body + f"{98 - int(body) * 100 % 97:02d}"
    compact = cc + iban_check(cc, bban) + bban
    if g.int(0, 2) == 0:
        return compact
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))


PUBLISHED_IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00", "FR14 2004 1010 0505 0001 3M02 606",
                   "NL91 ABNA 0417 1643 00", "CH93 0076 2011 6238 5295 7", "AT61 1904 3002 3457 3201",
                   "ES91 2100 0418 4502 0005 1332", "IE29 AIBK 9311 5212 3456 78", "IT60 X054 2811 1010 0000 0123 456"]


# --------------------------------------------------------------------------------------------------
# Clean notes (hard negatives)

def sha(g: Gen) -> str:
    return g.s(HEX, 40)


def memos_id(g: Gen) -> str:
    return g.s(MEMOS_ID, 14)


def luhn_failing_16(g: Gen) -> str:
    while True:
        n = g.pick(["4", "5", "6", "3"]) + g.s(string.digits, 15)
        if not luhn_ok(n):
            return n


CLEAN_TEMPLATES: list[tuple[str, object]] = [
    # (category, callable returning a note)
    ("date/time", lambda g: f"Dentist on {g.int(2024, 2026)}-{g.int(1, 12):02d}-{g.int(1, 28):02d} at "
                            f"{g.int(8, 17):02d}:{g.pick(['00', '15', '30', '45'])}, room {g.int(100, 4999)}."),
    ("date/time", lambda g: f"Team sync moved to {g.pick(DAYS)} {g.int(9, 16)}:{g.pick(['00', '30'])}, "
                            f"{g.pick(['floor', 'building'])} {g.int(2, 12)}."),
    ("date/time", lambda g: f"{g.name()}'s birthday is {g.int(1, 28)} {g.pick(MONTHS)}, turning {g.int(21, 70)}."),
    ("date/time", lambda g: f"Train leaves at {g.int(5, 22):02d}:{g.int(0, 59):02d} from platform {g.int(1, 14)}, "
                            f"coach {g.pick('ABCDEFG')}, seat {g.int(1, 80)}."),
    ("price/order", lambda g: f"Order #{g.int(10000, 999999)} shipped, total EUR {g.int(5, 900)}.{g.int(0, 99):02d}, "
                              f"arriving {g.pick(DAYS)}."),
    ("price/order", lambda g: f"Invoice INV-{g.int(2023, 2025)}-{g.int(1, 9999):04d} paid on {g.int(1, 28)} "
                              f"{g.pick(MONTHS)}: ${g.int(20, 4000)}.{g.int(0, 99):02d}"),
    ("price/order", lambda g: f"Groceries came to {g.int(12, 180)}.{g.int(0, 99):02d}, split three ways with "
                              f"{g.name()} and {g.name()}."),
    ("price/order", lambda g: f"Parcel tracking number 1Z{g.s(UPPER_ALNUM, 6)}{g.s(string.digits, 10)}, "
                              f"expected {g.pick(DAYS)}."),
    ("price/order", lambda g: f"Warranty claim reference {luhn_failing_16(g)} (kept the receipt)."),
    ("price/order", lambda g: f"Loyalty number {' '.join(luhn_failing_16(g)[i:i + 4] for i in range(0, 16, 4))} "
                              f"for the bakery stamp card."),
    ("version", lambda g: f"Upgraded numpy to {g.int(1, 2)}.{g.int(0, 26)}.{g.int(0, 9)} and Python to "
                          f"3.{g.int(9, 13)}.{g.int(0, 12)}; tests still pass."),
    ("version", lambda g: f"memos v{g.int(0, 3)}.{g.int(0, 20)}.{g.int(0, 9)} fixed the recall bug {g.name()} "
                          f"reported."),
    ("version", lambda g: f"Pinned the docker image to postgres:{g.int(13, 17)}.{g.int(0, 9)}-alpine for the "
                          f"{g.pick(PROJECTS)}."),
    ("uuid", lambda g: f"Ticket {g.uuid4()} reopened by {g.name()}."),
    ("uuid", lambda g: f"The experiment run id is {g.uuid4()}, results in the shared folder."),
    ("git sha", lambda g: f"Fixed in commit {sha(g)}, deployed on {g.pick(DAYS)}."),
    ("git sha", lambda g: f"Bisect points at {sha(g)} as the first bad commit."),
    ("git sha", lambda g: f"Reverted {g.s(HEX, 7)} and cherry-picked {g.s(HEX, 8)} onto the release branch."),
    ("git sha", lambda g: f"The tag v{g.int(1, 4)}.{g.int(0, 9)} points at {sha(g)}"),
    ("memos id", lambda g: f"See memory {memos_id(g)} for the full recipe."),
    ("memos id", lambda g: f"Merged {memos_id(g)} into {memos_id(g)}, they were duplicates."),
    ("memos id", lambda g: f"{memos_id(g)} is the note about the {g.pick(PROJECTS)}, pin it."),
    ("path", lambda g: f"The config lives in /home/{g.name().lower()}/.config/memos/config.toml now."),
    ("path", lambda g: f"Logs are under /var/log/{g.pick(['nginx', 'memos', 'postgresql'])}/, rotate weekly."),
    ("path", lambda g: f"Saved the scan as C:\\Users\\{g.name()}\\Documents\\taxes_{g.int(2019, 2025)}.pdf"),
    ("path", lambda g: f"Photos from the trip are in ~/Pictures/{g.int(2019, 2025)}/{g.pick(MONTHS).lower()}/"),
    ("url", lambda g: g.pick([
        "Docs for the secrets module: https://docs.python.org/3/library/secrets.html",
        "The talk is at https://www.youtube.com/watch?v=dQw4w9WgXcQ, watch before Friday.",
        "Local dashboard at http://localhost:{p}/admin after starting the stack.",
        "PR to review: https://github.com/{o}/{r}/pull/{n}",
        "Issue https://github.com/{o}/{r}/issues/{n} explains the crash.",
        "Booking page https://example.com/booking?id={n}&lang=en",
        "Her blog moved to https://medium.com/@{u}/notes-on-gardening-{n}",
        "Grafana is on http://192.168.1.{b}:3000/d/home, no login needed at home.",
    ]).format(p=g.int(3000, 9000), o=g.pick(["Yelp", "psf", "rust-lang", "numpy"]),
              r=g.pick(["detect-secrets", "requests", "rust", "numpy"]), n=g.int(10, 30000),
              u=g.name().lower(), b=g.int(2, 250))),
    ("keyword prose", lambda g: g.pick([
        "I forgot my password again and had to reset it.", "The secret is patience, said {n}.",
        "The key to the shed is under the mat.", "Password manager subscription renews in {m}.",
        "Remember to change the wifi password when {n} moves out.", "The secret ingredient in {n}'s soup is fennel.",
        "Lost the car key at the beach, the spare is with {n}.", "Bus token costs 2.50 now.",
        "Never reuse a password, {n} keeps telling me.", "The API key rotation policy is every {k} days.",
        "Key lime pie for {n}'s party on {d}.", "Keynote starts at 9, the secret session is at 4.",
        "Token ring networks came up in the history lecture.", "The password reset email never arrived.",
        "{n} keeps a secret diary in the bottom drawer.", "Piano lesson: practise the key of D minor.",
        "Need a new private key for the VPN, ask IT on {d}.", "Secret Santa budget is 20 EUR.",
        "The token economy chapter was the best part of the book.", "Don't write passwords on sticky notes.",
        "Ask {n} which key opens the basement.", "API keys go in the vault, never in notes.",
    ]).format(n=g.name(), m=g.pick(MONTHS), d=g.pick(DAYS), k=g.pick([30, 60, 90]))),
    ("number", lambda g: f"Room {g.int(100, 9999)} on the {g.int(2, 30)}th floor, badge desk opens at 8."),
    ("number", lambda g: f"Walked {g.int(4000, 25000):,} steps today, {g.int(2, 19)}.{g.int(0, 9)} km."),
    ("number", lambda g: f"{g.name()} was born in {g.int(1940, 2015)} and moved here in {g.int(1990, 2024)}."),
    ("number", lambda g: f"Flight {g.pick(['LH', 'BA', 'AF', 'KL', 'UA'])} {g.int(100, 9999)} boards at gate "
                         f"{g.pick('ABCDE')}{g.int(1, 60)}."),
    ("number", lambda g: f"Population of the town is about {g.int(10000, 900000):,}, says the census."),
    ("number", lambda g: f"Call extension {g.int(1000, 9999)} for the front desk."),
    ("number", lambda g: f"Meter reading {g.int(10000, 99999)} kWh on {g.int(1, 28)}.{g.int(1, 12)}.{g.int(2023, 2025)}."),
    ("number", lambda g: f"ISBN 978-{g.int(0, 1)}-{g.int(100, 999)}-{g.int(10000, 99999)}-{g.int(0, 9)}, "
                         f"borrowed from {g.name()}."),
    ("number", lambda g: f"Unix time {g.int(1_600_000_000, 1_800_000_000)} is when the backup started."),
    ("number", lambda g: f"Coordinates of the trailhead: {g.int(30, 60)}.{g.s(string.digits, 4)}, "
                         f"{g.int(1, 20)}.{g.s(string.digits, 4)}"),
    ("number", lambda g: f"The lab is in building {g.int(1, 40)}, room {g.int(1000, 4999)}; code for the printer "
                         f"queue is {g.int(10, 99)}."),
    ("quoted", lambda g: f"We watched \"{g.pick(['Oppenheimer', 'Arrival', 'Amelie', 'Paddington', 'Heat'])}\" "
                         f"with {g.name()} on {g.pick(DAYS)}."),
    ("quoted", lambda g: f"{g.name()} said \"see you at the station at {g.int(6, 11)}\" but was late."),
    ("quoted", lambda g: f"The book club picked '{g.pick(['Middlemarch', 'Dune', 'Beloved', 'Kindred'])}' for "
                         f"{g.pick(MONTHS)}."),
    ("hex/other ids", lambda g: f"Paint colour for the hallway is #{g.s(HEX, 6)}, matte."),
    ("hex/other ids", lambda g: f"Docker image digest sha256:{g.s(HEX, 64)} is the last good build."),
    ("hex/other ids", lambda g: f"MAC address of the printer: {':'.join(g.s(HEX, 2) for _ in range(6))}"),
    ("hex/other ids", lambda g: f"Library card barcode {g.int(10**9, 10**10 - 1)}, renew online."),
    ("hex/other ids", lambda g: f"Case number {g.s(string.ascii_uppercase, 3)}-{g.int(100000, 999999)} with the "
                                f"insurance, adjuster is {g.name()}."),
    ("plain", lambda g: f"{g.name()} recommends the ramen place near the station, closed on {g.pick(DAYS)}s."),
    ("plain", lambda g: f"Water the tomatoes every {g.int(2, 4)} days while {g.name()} is away in {g.pick(MONTHS)}."),
    ("plain", lambda g: f"Pick up {g.int(2, 12)} kg of flour and {g.int(1, 6)} dozen eggs for the bake sale."),
    ("plain", lambda g: f"Book the campsite for the {g.pick(MONTHS)} long weekend, pitch {g.int(1, 120)} by the lake."),
    ("plain", lambda g: f"Recipe: {g.int(50, 250)} g butter, {g.int(50, 300)} g sugar, bake at {g.pick([160, 180, 200])} C "
                        f"for {g.int(20, 55)} minutes."),
    ("plain", lambda g: f"Our table is number {g.int(1, 40)}, booked under {g.name()} for {g.int(2, 12)} people."),
    ("date/time", lambda g: f"Parent-teacher meeting {g.pick(DAYS)} {g.int(1, 28)} {g.pick(MONTHS)} at "
                            f"{g.int(15, 19)}:{g.pick(['00', '20', '40'])}, classroom {g.int(1, 30)}{g.pick('ABC')}."),
    ("date/time", lambda g: f"Backup finished at {g.int(2023, 2025)}-{g.int(1, 12):02d}-{g.int(1, 28):02d}T"
                            f"{g.int(0, 23):02d}:{g.int(0, 59):02d}:{g.int(0, 59):02d}Z, {g.int(2, 900)} GB."),
    ("date/time", lambda g: f"Tax year {g.int(2021, 2025)}/{g.int(22, 26)} return submitted on {g.int(1, 28)} "
                            f"{g.pick(MONTHS)}."),
    ("number", lambda g: f"Car service due at {g.int(20, 200) * 1000:,} km, last one was in {g.pick(MONTHS)}."),
    ("number", lambda g: f"Blood pressure {g.int(105, 140)}/{g.int(65, 90)}, pulse {g.int(55, 90)} this morning."),
    ("number", lambda g: f"Serial number of the laptop: {g.s(UPPER_ALNUM, 10)}, bought in {g.int(2018, 2025)}."),
    ("price/order", lambda g: f"Refund of {g.int(5, 300)}.{g.int(0, 99):02d} EUR for order {g.int(100000, 9999999)} "
                              f"should arrive within {g.int(3, 14)} days."),
    ("version", lambda g: f"Kernel {g.int(5, 6)}.{g.int(1, 15)}.{g.int(1, 40)} broke the wifi driver, rolled back."),
    ("version", lambda g: f"The lockfile pins requests==2.{g.int(25, 32)}.{g.int(0, 5)} and urllib3<2 for the "
                          f"{g.pick(PROJECTS)}."),
    ("git sha", lambda g: f"CI failed on {sha(g)} because of a flaky test in tests/test_recall.py."),
    ("git sha", lambda g: f"git checkout {g.s(HEX, 7)} -- memos_cli/store.py fixed it."),
    ("url", lambda g: f"Recipe from https://www.example.com/recipes/{g.pick(['lentil-soup', 'banana-bread', 'dal'])}"
                      f"-{g.int(100, 9999)}, halve the salt."),
    ("keyword prose", lambda g: g.pick([
        "Keys to the flat: two on the hook by the door, one with {n}.", "The secret garden tour is on {d}.",
        "My token for the laundry machine is in the blue jar.", "Password hint is the dog's name, not writing it here.",
        "{n} says the secret to good bread is a long, cold proof.", "Keyboard shortcut for the terminal is ctrl+alt+t.",
        "Rotate the API keys on the {k}th, per the security checklist.", "The locksmith cut a new key for {n}, 12 EUR.",
    ]).format(n=g.name(), d=g.pick(DAYS), k=g.int(1, 28))),
    ("quoted", lambda g: f"The error was \"connection refused\" on port {g.int(1024, 65535)}."),
    ("quoted", lambda g: f"Set the theme to '{g.pick(['solarized-dark', 'gruvbox', 'nord', 'dracula'])}' in the editor."),
    ("hex/other ids", lambda g: f"Wi-Fi network is Home-5G-{g.s(HEX, 4).upper()}, the guest one is open."),
]


def synthetic_clean(g: Gen, n: int) -> list[dict]:
    out, seen = [], set()
    while len(out) < n:
        cat, fn = g.pick(CLEAN_TEMPLATES)
        text = fn(g)  # type: ignore[operator]
        if text in seen or cardlike(text):
            continue
        seen.add(text)
        out.append({"text": text, "kinds": [], "source": f"synthetic clean note ({cat})"})
    return out


LOCOMO_REJECT = re.compile(r"@|\+\s?\d|\d{7,}|://|\b[A-Z]{2}\d{2} ?[A-Z0-9]{4}")


def locomo_clean(g: Gen, eval_dir: Path, n: int) -> list[dict]:
    path = eval_dir / "data" / "locomo_dev.json"
    samples = json.loads(path.read_text())
    turns = []
    for sample in samples:
        conv = sample["conversation"]
        for key, value in conv.items():
            if key.startswith("session_") and isinstance(value, list):
                for turn in value:
                    text = turn.get("text", "").strip()
                    if len(text) >= 25 and not LOCOMO_REJECT.search(text):
                        turns.append((sample["sample_id"], turn["dia_id"], text))
    if len(turns) < n:
        raise SystemExit(f"only {len(turns)} usable LoCoMo turns in {path}, need {n}")
    chosen = g.r.sample(turns, n)
    return [{"text": t, "kinds": [], "source": f"LoCoMo turn {sid} {dia}"} for sid, dia, t in chosen]


# --------------------------------------------------------------------------------------------------

def build(eval_dir: Path) -> list[dict]:
    g = Gen(SEED)
    rows: list[dict] = []

    def add(text: str, kind: str | None, source: str) -> None:
        rows.append({"text": text, "kinds": [kind] if kind else [], "source": source})

    def is_line(fragment: str) -> bool:
        return bool(re.search(r"[=:(]|\s", fragment)) and not fragment.startswith("http")

    # Secrets: the tests' own examples first, then generated ones up to N_SECRET a kind.
    for kind, examples in FROM_TESTS.items():
        for fragment, path in examples:
            if kind == "private-key":
                text = wrap(g, PRIVATE_KEY_NOTES, fragment)
            elif kind == "high-entropy":
                text = wrap(g, HIGH_ENTROPY_NOTES, fragment)
            elif kind in ("password", "service-token") or is_line(fragment):
                text = wrap(g, LINE_NOTES, fragment)
            elif fragment.startswith("https://hooks.slack.com/"):
                text = wrap(g, WEBHOOK_NOTES, fragment)
            elif kind == "url-password":
                text = wrap(g, URL_NOTES, fragment)
            else:
                text = wrap(g, TOKEN_NOTES, fragment)
            add(text, kind, DS + path)

    simple = {"github-token": gen_github, "gitlab-token": gen_gitlab, "slack-token": gen_slack,
              "stripe-key": gen_stripe, "openai-key": gen_openai, "jwt": gen_jwt, "url-password": gen_url_password}
    for kind in ["private-key", "aws-key", "azure-key", "github-token", "gitlab-token", "slack-token", "stripe-key",
                 "openai-key", "jwt", "url-password", "password", "high-entropy"]:
        have = sum(1 for r in rows if r["kinds"] == [kind])
        while have < N_SECRET:
            source = f"generated in the format of detect-secrets {PLUGIN[kind]}"
            if kind == "private-key":
                text = wrap(g, PRIVATE_KEY_NOTES, gen_private_key(g))
            elif kind == "aws-key":
                frag, line = gen_aws(g)
                text = wrap(g, LINE_NOTES if line else TOKEN_NOTES, frag)
            elif kind == "azure-key":
                text = wrap(g, LINE_NOTES, gen_azure(g))
            elif kind == "password":
                text = wrap(g, LINE_NOTES, gen_password_line(g))
            elif kind == "high-entropy":
                value, plugin = gen_high_entropy(g)
                text = wrap(g, HIGH_ENTROPY_NOTES, value)
                source = f"generated in the format of detect-secrets {plugin}"
            elif kind == "url-password":
                text = wrap(g, URL_NOTES, gen_url_password(g))
            else:
                frag = simple[kind](g)
                text = wrap(g, WEBHOOK_NOTES if frag.startswith("https://hooks.slack.com/") else TOKEN_NOTES, frag)
            if stray_personal(text):
                continue
            add(text, kind, source)
            have += 1

    for service in SERVICES:
        have = sum(1 for r in rows if r["source"] == DS + SERVICE_TEST[service])
        for _ in range(max(N_SERVICE - have, 3)):
            while True:
                frag = gen_service(g, service)
                text = wrap(g, LINE_NOTES if service in LINE_SERVICES else TOKEN_NOTES, frag)
                if not stray_personal(text):
                    break
            add(text, "service-token",
                f"generated in the format of detect-secrets {SERVICE_PLUGIN[service]} ({service})")

    # Personal data
    whos = lambda: g.pick(NAMES)  # noqa: E731
    for v in PUBLISHED_TEST_CARDS:
        add(g.pick(PERSONAL_NOTES["card"]).format(who=whos(), day=g.pick(DAYS), month=g.pick(MONTHS),
                                                  v=format_card(g, v)),
            "card", "published payment-card test number (Luhn valid)")
    for v in PUBLISHED_IBANS:
        add(g.pick(PERSONAL_NOTES["iban"]).format(who=whos(), month=g.pick(MONTHS), v=v),
            "iban", "well-known specimen IBAN (mod-97 valid)")
    makers = {"email": (gen_email, "generated e-mail address at an example domain"),
              "phone": (gen_phone, "generated international phone number (+country code), valid national format"),
              "card": (lambda g_: format_card(g_, gen_card_number(g_)),
                       "generated card number: network prefix and length, Luhn check digit"),
              "iban": (gen_iban, "generated IBAN: country BBAN format, mod-97 check digits")}
    for kind, (make, source) in makers.items():
        have = sum(1 for r in rows if r["kinds"] == [kind])
        while have < N_PERSONAL:
            v = make(g)
            if kind != "card" and cardlike(v):  # e.g. an IBAN or phone whose digits happen to pass Luhn
                continue
            add(g.pick(PERSONAL_NOTES[kind]).format(who=whos(), day=g.pick(DAYS), month=g.pick(MONTHS), v=v),
                kind, source)
            have += 1

    # Clean notes
    rows += synthetic_clean(g, N_SYNTHETIC_CLEAN)
    rows += locomo_clean(g, eval_dir, N_LOCOMO)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval",
                    help="the folder holding data/locomo_dev.json")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = build(args.eval)
    texts = [r["text"] for r in rows]
    if len(set(texts)) != len(texts):
        raise SystemExit("duplicate notes in the corpus")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    for r in rows:
        key = r["kinds"][0] if r["kinds"] else "(clean)"
        counts[key] = counts.get(key, 0) + 1
    print(f"{len(rows)} notes -> {args.out}", file=sys.stderr)
    for k, v in counts.items():
        print(f"  {k:14s} {v}", file=sys.stderr)


if __name__ == "__main__":
    main()
