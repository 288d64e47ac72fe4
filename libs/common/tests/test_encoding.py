import pytest

from keelson.encoding import b64url_decode, b64url_encode


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"\xfb\xff\xfe"])
def test_round_trip_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


def test_uses_the_url_safe_alphabet() -> None:
    assert b64url_encode(b"\xfb\xff\xfe") == "-__-"


def test_refuses_what_is_not_base64url() -> None:
    with pytest.raises(ValueError):
        b64url_decode("a")
