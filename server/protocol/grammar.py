"""The character classes of RFC 9110 that the parser, its error messages and block shapes share."""

from __future__ import annotations

import re

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # a token's characters (RFC 9110 5.6.2)
TOKEN = re.compile(TCHAR + rb"+")
# What a field value may hold: HTAB, SP, visible ASCII and obs-text, never another control (RFC 9110 5.5).
VALUE_CHAR = r"[^\x00-\x08\x0a-\x1f\x7f]"
