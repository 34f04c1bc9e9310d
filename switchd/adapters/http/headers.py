"""A request's header block, read as pywsgi reads it, without the email parser for the
shape every real request has.

pywsgi builds `handler.headers` with `http.client.parse_headers`, which runs the email
package's feed parser (a regex line splitter, a generator per message, policy calls per
line): the largest single cost of an HTTP request to switchd after the application. Here
the lines are read exactly as `http.client` reads them (the same line and count limits,
the same errors), and when every line is a plain `Name: value` (a token name, no
continuation, no bare CR, no "From " envelope line) the message is built with the same
public calls the feed parser makes (`msg[name] = value`, compat32: the value with leading
blanks dropped). Anything else goes through `http.client`'s own parse of the same bytes.
A property test holds the two equal.
"""
from __future__ import annotations

import email.parser
import http.client
import re

from gevent.pywsgi import OldMessage

# http.client's limits (its private _MAXLINE and _MAXHEADERS).
MAX_LINE = 65536
MAX_HEADERS = 100

# A header line the feed parser reads as one (name, value): a name of the characters its
# headerRE allows (printable ASCII but ':' and space), then ':', then a value without CR
# or LF (the feed parser breaks lines at either), then the line's end.
_PLAIN_LINE = re.compile(r"([\041-\071\073-\176]+):([^\r\n]*)(?:\r\n|\n)?\Z")


def read_headers(fp) -> OldMessage:
    """What gevent's pywsgi `headers_factory(fp)` returns (an OldMessage; its `status`
    says 'Line too long' for an over-long line); raises http.client.HTTPException for
    more than MAX_HEADERS lines, as http.client does."""
    lines = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            message = OldMessage()
            message.status = "Line too long"
            return message
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    message = OldMessage()
    for line in lines[:-1]:            # the last is the blank line (or the end of input)
        match = _PLAIN_LINE.match(line.decode("iso-8859-1"))
        if match is None:
            return email.parser.Parser(_class=OldMessage).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        message[match.group(1)] = match.group(2).lstrip(" \t")
    return message
