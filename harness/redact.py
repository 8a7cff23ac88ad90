"""Secrets kept out of everything the harness prints or stores: credentials in URLs and token-like variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

HIDDEN = "****"
#: ``scheme://user:password@host`` (or ``scheme://token@host``): what sits before the ``@`` is a credential
CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<secret>[^/\s@]+)@")
#: variables whose whole value is a secret
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|AUTH)", re.IGNORECASE)


def secrets(variables: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named variables in ``variables`` (default: this process's), longest first."""
    found = {v for k, v in (os.environ if variables is None else variables).items()
             if SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(found, key=len, reverse=True)


def redact(text: str, variables: Mapping[str, str] | None = None) -> str:
    """``text`` with URL credentials (``https://user:secret@host`` -> ``https://****@host``) and the values of
    secret-named variables (``*_TOKEN``, ``*_PASSWORD``, ...) replaced by ``****``."""
    text = CREDENTIALS.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    for value in secrets(variables):
        text = text.replace(value, HIDDEN)
    return text
