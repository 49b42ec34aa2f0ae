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
_SECRET_NAME = re.compile(r"token|key|secret|sig|password|passwd|auth|credential|session", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s'\"<>)]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def redact_url(url: str) -> str:
    """`url` with its user:password and the values of token-like query parameters replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{REDACTED}@{host}" if parts.username or parts.password else parts.netloc
    if (parts.username or parts.password) and parts.port:
        netloc += f":{parts.port}"
    query = urlencode(
        [(k, REDACTED if _SECRET_NAME.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe=REDACTED,
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` with every URL in it redacted and Hugging Face tokens removed."""
    return _HF_TOKEN.sub("hf_" + REDACTED, _URL.sub(lambda m: redact_url(m.group(0)), text))
