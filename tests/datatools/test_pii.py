"""PII scrubbing: each kind caught and counted; dates, versions, ordinary numbers and words left alone;
scrubbing scrubbed text changes nothing."""

import pytest

from tuneforge.datatools.pii import scrub

CAUGHT = [
    ("write to ann.lee@example.co.uk now", "write to [EMAIL] now", "email"),
    ("call +44 20 7946 0958 today", "call [PHONE] today", "phone"),
    ("call (555) 123-4567.", "call [PHONE].", "phone"),
    ("call 555.123.4567", "call [PHONE]", "phone"),
    ("server 192.168.1.20 is down", "server [IP] is down", "ip"),
    ("host 2001:db8::8a2e:370:7334 ok", "host [IP] ok", "ip"),
    ("link fe80::1ff:fe23:4567:890a up", "link [IP] up", "ip"),
    ("card 4111 1111 1111 1111 exp", "card [CREDIT_CARD] exp", "credit_card"),
    ("card 5500-0000-0000-0004", "card [CREDIT_CARD]", "credit_card"),
    ("key sk-proj-abcdefghijklmnopqrstuvwx12", "key [SECRET]", "secret"),
    ("token ghp_" + "a1B2" * 9, "token [SECRET]", "secret"),
    ("HF hf_" + "AbCdEfGh" * 4, "HF [SECRET]", "secret"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]", "secret"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "Authorization: [SECRET]", "secret"),
]
LEFT_ALONE = [
    "on 2024-01-15 at 12:30:45", "python 3.10.2, v2.1.0 and build 10.0.19041.1", "it costs 1,000,000 dollars",
    "order 12345678 shipped", "in the year 1999", "std::vector<int> and a::b", "pi is 3.14159",
    "4111 1111 1111 1112 fails the Luhn check", "ratio 16:9", "ISBN 978-3-16-148410-0", "call me maybe",
    "version 1.2.3.4.5", "user@localhost", "0000 0000 0000 0000", "a sketch of the skyline", "route 66 to 999.1",
]


@pytest.mark.parametrize("text,expected,kind", CAUGHT)
def test_pii_is_replaced_and_counted(text, expected, kind):
    scrubbed, counts = scrub(text)
    assert scrubbed == expected
    assert dict(counts) == {kind: 1}
    assert scrub(scrubbed) == (scrubbed, {})  # idempotent: placeholders are not PII


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_non_pii_is_left_alone(text):
    assert scrub(text) == (text, {})


def test_counts_add_up_and_kinds_can_be_limited():
    text = "a@b.io, c@d.org, 10.0.0.1 and sk-" + "x" * 24
    scrubbed, counts = scrub(text)
    assert scrubbed == "[EMAIL], [EMAIL], [IP] and [SECRET]"
    assert dict(counts) == {"email": 2, "ip": 1, "secret": 1}
    assert scrub(text, kinds={"ip"}) == ("a@b.io, c@d.org, [IP] and sk-" + "x" * 24, {"ip": 1})
