"""Keep the database password (any URL's password) out of every message and log line."""

from __future__ import annotations

import logging
import re

MASK = "***"
# A URL runs from its scheme to the next whitespace; quotes around it stay outside the scheme.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")


def url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host...``, or None.

    It runs to the LAST ``@``: operators do not always percent-encode it, so a password holding
    ``@``, ``/`` or a quote is still taken whole (over-masking is the safe side).
    """
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not (sep and at) or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2] or None


def hide_password(text: str) -> str:
    """``text`` with the password of every URL in it rendered as ``***``."""

    def mask(match: re.Match[str]) -> str:
        url = match.group(0)
        scheme, _, rest = url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return url
        return f"{scheme}://{userinfo.partition(':')[0]}:{MASK}@{host}"

    return _URL.sub(mask, text)


def hide_secrets(text: str, *secrets: str | None) -> str:
    """``hide_password``, and every given secret replaced wherever else it appears (a password with
    a space in it, or one a driver quoted on its own)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return hide_password(text)


class HidePasswords(logging.Filter):
    """A handler filter: URLs in a record's rendered message lose their password."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = hide_password(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
