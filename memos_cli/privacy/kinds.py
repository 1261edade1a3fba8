"""The kinds of sensitive text memos looks for, and their groups.

Pure data (no detector is imported here): the config checks ``[privacy]`` keys
against these names without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

SECRETS = "secrets"
PERSONAL = "personal"
GROUPS = (SECRETS, PERSONAL)


@dataclass(frozen=True)
class Kind:
    name: str
    group: str  # SECRETS or PERSONAL
    help: str


# In order of precedence: when two kinds find the same characters, the earlier names them
# (an AWS key inside a quoted string is an aws-key, not a high-entropy string).
KINDS: tuple[Kind, ...] = (
    Kind("private-key", SECRETS, "PEM and OpenSSH private key blocks"),
    Kind("aws-key", SECRETS, "AWS access key ids and secret keys"),
    Kind("azure-key", SECRETS, "Azure storage account keys"),
    Kind("github-token", SECRETS, "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_)"),
    Kind("gitlab-token", SECRETS, "GitLab tokens (glpat- and the other prefixes)"),
    Kind("slack-token", SECRETS, "Slack tokens and webhook URLs"),
    Kind("stripe-key", SECRETS, "Stripe secret and restricted keys"),
    Kind("openai-key", SECRETS, "OpenAI API keys"),
    Kind("service-token", SECRETS, "npm, PyPI, SendGrid, Twilio, Discord, Telegram, Mailchimp, Square, "
                                   "Artifactory, IBM, Cloudant and SoftLayer credentials"),
    Kind("jwt", SECRETS, "JSON web tokens"),
    Kind("url-password", SECRETS, "passwords in URLs (https://user:password@host)"),
    Kind("password", SECRETS, "values given to password, secret, api_key and similar keys"),
    Kind("high-entropy", SECRETS, "quoted random-looking strings (base64 or hex)"),
    Kind("iban", PERSONAL, "IBANs (country format and mod-97 check)"),
    Kind("card", PERSONAL, "payment card numbers (network prefix and Luhn check)"),
    Kind("email", PERSONAL, "e-mail addresses"),
    Kind("phone", PERSONAL, "phone numbers: international (+country code), or national ones of privacy.phone_region"),
)
BY_NAME = {k.name: k for k in KINDS}
NAMES = tuple(BY_NAME)
ORDER = {name: i for i, name in enumerate(NAMES)}


def in_group(group: str) -> tuple[str, ...]:
    return tuple(k.name for k in KINDS if k.group == group)
