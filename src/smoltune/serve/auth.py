"""What makes the server safe to expose: the API key, where runtime adapter loading may read from, and the
warning for a non-loopback host without a key."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "SMOLTUNE_API_KEY"


@dataclass(frozen=True)
class Denied(Exception):
    """A request the server's policy refuses: 401 (no or wrong key) or 403 (adapter loading)."""

    status: int
    message: str
    code: str | None = None


def check_bearer(header: str | None, api_key: str | None) -> None:
    """`Authorization: Bearer <key>`; compared in constant time so the key cannot be guessed byte by byte."""
    if not api_key:
        return
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Denied(401, "Missing API key: send it as 'Authorization: Bearer <key>'.", "invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise Denied(401, "Incorrect API key provided.", "invalid_api_key")


def allowed_adapter_path(path: str, root: Path | None, enabled: bool) -> Path:
    """The folder resolved (symlinks and `..` followed) if runtime loading is on and it lies under `root`."""
    if not enabled or root is None:
        raise Denied(403, "Runtime adapter loading is off; start the server with --allow-adapter-loading "
                          "--adapter-root DIR to allow it.")  # fmt: skip
    folder = Path(path).expanduser().resolve()
    if not folder.is_relative_to(root.expanduser().resolve()):
        raise Denied(403, "path: adapters are loaded only from folders under the server's --adapter-root.")
    return folder


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, api_key: str | None) -> str | None:
    if api_key or is_loopback(host):
        return None
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this port can use the models. "
        f"Pass --api-key or set {API_KEY_ENV}."
    )
