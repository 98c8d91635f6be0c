"""Property tests for the new input handling: environment names, header values, bodies."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from kourier import protocol
from kourier.cli.admin import BODY_PREVIEW, _body_text
from kourier.errors import ProtocolError
from kourier.settings import Settings, unknown_names

SETTING_NAMES = [f"KOURIER_{f.name.upper()}" for f in dataclasses.fields(Settings)]
names = st.one_of(
    st.sampled_from(SETTING_NAMES),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", max_size=30).map(
        lambda tail: "KOURIER_" + tail
    ),
    st.text(max_size=30),
)


@given(st.dictionaries(names, st.text(max_size=5), max_size=20))
def test_unknown_names_flags_only_kourier_names_that_are_not_settings(
    environ: dict[str, str],
) -> None:
    """Any environment: settings and non-KOURIER_ names are never flagged, and each hint
    is a valid name."""
    flagged = unknown_names(environ, Settings)
    assert set(flagged) <= {name for name in environ if name.startswith("KOURIER_")}
    assert not set(flagged) & set(SETTING_NAMES)
    for hint in flagged.values():
        assert hint is None or hint.startswith("KOURIER_")


@given(st.binary(max_size=600), st.booleans())
def test_a_body_is_always_one_line(body: bytes, full: bool) -> None:
    """Any body shows as one line, cut after the preview unless full."""
    text = _body_text(body, full=full)
    assert "\n" not in text and "\r" not in text
    if not full and len(text) > BODY_PREVIEW:
        assert text.endswith("--full shows all)")


@given(st.binary(max_size=20))
def test_any_scheme_header_decodes_or_is_a_format_error(raw: bytes) -> None:
    """A kourier-scheme value is http, https, or a ProtocolError, never anything else."""
    key, value, headers = protocol.encode_request(protocol.Request("1", "GET", "/"))
    try:
        request = protocol.decode_request(key, value, [*headers, (protocol.H_SCHEME, raw)])
    except ProtocolError:
        assert raw not in (b"http", b"https")
    else:
        assert request.scheme == raw.decode()
