"""Secrets never leave the process: URL credentials and token-like query values are redacted from every
log line, file, report and artifact smoltune writes.

    python -c "from smoltune.redaction import redact; print(redact('https://u:p@h/x.jsonl?token=abc&n=1'))"

Written by hand because it is a few lines over `urllib.parse`, and the rule (which query names count as
secrets) is this project's: a signed URL (S3/GCS/Azure) or `?token=` data link must not end up in
summary.json or a Prefect artifact. The job still runs with the real URL; only what is written is redacted.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query and path names whose value is a secret: tokens, keys, signatures (S3 X-Amz-Signature, GCS
# X-Goog-Signature, Azure SAS `sig`), passwords, OAuth `code`s and session ids.
_SECRET_NAME = re.compile(
    r"token|key|secret|sig|password|passwd|passphrase|pwd|auth|credential|session|code|bearer|jwt|apikey|private",
    re.IGNORECASE,
)
_URL = re.compile(r"https?://[^\s'\"<>)]+")
# Well-known token formats, wherever they appear (a URL path, a message): Hugging Face, GitHub, OpenAI-style,
# Slack, AWS access key ids.
_TOKEN = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"
)
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """`url` with its user:password, the values of token-like query parameters and a path segment that follows a
    secret-named one (`/token/<value>/`) replaced. Never raises: a URL the parser rejects (a bad port, a broken
    IPv6 host) is redacted by pattern instead, since redaction runs on error messages about exactly such URLs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.username is not None or parts.password is not None:
            netloc = f"{REDACTED}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        query = urlencode(
            [(k, _secret_value(k, v)) for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe=REDACTED
        )
        return urlunsplit((parts.scheme, netloc, _redact_path(parts.path), query, parts.fragment))
    except ValueError:
        return _redact_by_pattern(url)


def _secret_value(name: str, value: str) -> str:
    return REDACTED if _SECRET_NAME.search(name) else value


def _redact_path(path: str) -> str:
    segments = path.split("/")
    for i in range(1, len(segments)):
        if segments[i] and _SECRET_NAME.fullmatch(segments[i - 1] or "-"):
            segments[i] = REDACTED
    return "/".join(segments)


def _redact_by_pattern(url: str) -> str:
    """The fallback for a URL `urlsplit` refuses: credentials and every query value after a secret name."""
    url = _USERINFO.sub(f"{REDACTED}@", url)
    return re.sub(r"([?&;]([^=&;#]*)=)([^&;#]*)", lambda m: m.group(1) + _secret_value(m.group(2), m.group(3)), url)


def redact(text: str) -> str:
    """`text` with every URL in it redacted and well-known token formats removed."""
    return _TOKEN.sub(REDACTED, _URL.sub(lambda m: redact_url(m.group(0)), text))


def redact_tree(data: object) -> object:
    """Every string inside nested dicts and lists redacted (a config dump: any field may hold a URL)."""
    if isinstance(data, dict):
        return {k: redact_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_tree(v) for v in data]
    return redact(data) if isinstance(data, str) else data
