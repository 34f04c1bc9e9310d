"""switchd.adapters.http.headers.read_headers gives what pywsgi's own header parsing
(http.client.parse_headers into gevent's OldMessage) gives, for any header block."""
import http.client
import io

from gevent.pywsgi import headers_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from switchd.adapters.http.headers import MAX_HEADERS, MAX_LINE, read_headers

_NAMES = st.one_of(
    st.sampled_from(["Host", "Content-Type", "Content-Length", "Connection", "Expect",
                     "content-length", "X_Under", "From", "Transfer-Encoding", "Cookie"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=6),
)
_VALUES = st.one_of(
    st.sampled_from(["", " x", "\tx ", "127.0.0.1:8080", "application/x-www-form-urlencoded",
                     "100-continue", "close", "a\rb", "a\x85b", "a\x0bb", "a\x1cb", "é",
                     "  lead and trail  "]),
    st.text(st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\n"),
            max_size=12),
)
_LINE = st.one_of(
    st.tuples(_NAMES, _VALUES).map(lambda nv: f"{nv[0]}:{nv[1]}"),
    st.tuples(_NAMES, _VALUES).map(lambda nv: f"{nv[0]}: {nv[1]}"),
    st.sampled_from([" continued", "\tcontinued", "From someone", "no colon", ":empty name"]),
)


def _outcome(parse, raw: bytes):
    fp = io.BufferedReader(io.BytesIO(raw))
    try:
        message = parse(fp)
    except http.client.HTTPException as exc:
        return ("raised", type(exc), str(exc))
    return ("message", message.status, list(message.items()), list(message.headers),
            message.typeheader, message.get("content-length"), message.get_all("cookie"),
            [type(d) for d in message.defects], fp.read())


@settings(max_examples=500, deadline=None)
@given(st.lists(_LINE, max_size=8), st.sampled_from(["\r\n", "\n"]),
       st.sampled_from(["\r\n", "\n", ""]), st.binary(max_size=8))
def test_equal_to_pywsgi_on_generated_header_blocks(lines, eol, end, body):
    raw = "".join(line + eol for line in lines).encode("latin-1") + end.encode() + body
    assert _outcome(read_headers, raw) == _outcome(headers_factory, raw)


def test_equal_on_a_real_lookup_and_at_the_limits():
    lookup = (b"Host: 127.0.0.1:8080\r\nAccept: */*\r\nContent-Length: 4417\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\n\r\nsection=dialplan")
    too_long = b"X: " + b"a" * MAX_LINE + b"\r\n\r\n"
    too_many = b"".join(b"X%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    at_most = b"".join(b"X%d: v\r\n" % i for i in range(MAX_HEADERS - 1)) + b"\r\n"
    for raw in (lookup, too_long, too_many, at_most, b"", b"\r\n"):
        assert _outcome(read_headers, raw) == _outcome(headers_factory, raw)
    assert _outcome(read_headers, lookup)[2][2] == ("Content-Length", "4417")
    assert _outcome(read_headers, too_long)[1] == "Line too long"
    assert _outcome(read_headers, too_many)[0] == "raised"
