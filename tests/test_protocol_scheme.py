"""The optional kourier-scheme request header: absent is http, https travels, else an error."""

from __future__ import annotations

import pytest

from kourier import protocol
from kourier.errors import ProtocolError
from kourier.protocol import ReplyAddress, Request


def test_http_sends_no_header_and_https_round_trips() -> None:
    """A plain http request carries no kourier-scheme; https is encoded and decoded."""
    plain = Request("1", "GET", "/", reply_to=ReplyAddress("r", 0))
    key, value, headers = protocol.encode_request(plain)
    assert protocol.H_SCHEME not in dict(headers)
    assert protocol.decode_request(key, value, headers).scheme == "http"
    secure = Request("2", "GET", "/", reply_to=ReplyAddress("r", 0), scheme="https")
    key, value, headers = protocol.encode_request(secure)
    assert dict(headers)[protocol.H_SCHEME] == b"https"
    assert protocol.decode_request(key, value, headers).scheme == "https"


@pytest.mark.parametrize("raw", [b"ftp", b"HTTPS", b""])
def test_another_scheme_is_a_format_error(raw: bytes) -> None:
    """A kourier-scheme other than http or https is refused naming the header."""
    key, value, headers = protocol.encode_request(Request("1", "GET", "/"))
    with pytest.raises(ProtocolError, match="kourier-scheme"):
        protocol.decode_request(key, value, [*headers, (protocol.H_SCHEME, raw)])
