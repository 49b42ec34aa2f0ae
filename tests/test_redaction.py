"""Redaction: secrets never written, and redaction itself never raises (it runs on error messages about broken
URLs). Generated inputs with Hypothesis; the deep profile (`make fuzz`) runs thousands of them."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from smoltune.redaction import REDACTED, redact, redact_tree, redact_url

SECRET = "S3cr3tValue9"
names = st.sampled_from(["token", "api_key", "X-Amz-Signature", "sig", "password", "pwd", "code", "access_token"])
plain = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=1, max_size=12)


def test_known_shapes() -> None:
    assert redact("https://u:p@h/x.jsonl?token=abc&n=1") == f"https://{REDACTED}@h/x.jsonl?token={REDACTED}&n=1"
    assert redact("https://h.com/token/abc123/data.json") == f"https://h.com/token/{REDACTED}/data.json"
    assert redact("push with hf_abcdefghijklmnopqrstuv") == f"push with {REDACTED}"
    assert redact("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"  # nothing secret: unchanged


def test_urls_the_parser_refuses_are_still_redacted() -> None:
    # urlsplit raises on a broken IPv6 host; `.port` raises on a port out of range or not a number.
    assert redact_url("http://[::1/x?token=abc") == f"http://[::1/x?token={REDACTED}"
    assert "pw" not in redact_url("http://user:pw@h:99999999/x")
    assert "pw" not in redact_url("http://user:pw@h:port/x?sig=s") and "sig=" + REDACTED in redact_url(
        "http://user:pw@h:port/x?sig=s"
    )


@given(st.text(max_size=300))
def test_redact_never_raises_on_any_text(text: str) -> None:
    assert isinstance(redact(text), str)


@given(st.text(alphabet=string.printable, max_size=80), st.text(alphabet=string.printable, max_size=80))
def test_redact_never_raises_on_url_like_text(host: str, rest: str) -> None:
    assert isinstance(redact(f"https://{host}/{rest}"), str)


@given(names, plain, plain, st.booleans(), st.sampled_from(["", ":8080", ":99999999", ":x"]))
def test_secrets_in_generated_urls_never_survive(name: str, host: str, path: str, userinfo: bool, port: str) -> None:
    cred = f"user:{SECRET}@" if userinfo else ""
    url = f"https://{cred}{host}{port}/{path}?a=1&{name}={SECRET}#frag"
    assert SECRET not in redact(f"could not read {url}: timed out")


def test_every_string_of_a_config_dump() -> None:
    dump = {"output": {"notify_server": f"http://admin:{SECRET}@serve:8000"}, "tags": [f"https://h/?key={SECRET}"]}
    assert SECRET not in str(redact_tree(dump))
    assert redact_tree({"n": 3, "x": None}) == {"n": 3, "x": None}
