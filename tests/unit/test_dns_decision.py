"""baton_dns's decision: what to send from what the primary holds (pure; no server needed)."""

import dns.name
import pytest
from baton_dns import (
    CompareAndSwapFailed,
    DnsError,
    Record,
    Server,
    absolute_name,
    canonical,
    decide,
    parse_server,
)

ZONE = dns.name.from_text("baton.internal")
DB = absolute_name("db", ZONE)
EAST, WEST = "10.231.1.11", "10.231.2.11"


def rec(*values, ttl=10):
    return Record(DB, "A", tuple(sorted(values)), ttl if values else None)


def test_a_record_that_already_holds_the_values_needs_no_update():
    assert decide(rec(WEST), rec(WEST), "present", None).action == "none"


def test_a_finished_swap_run_again_is_ok_although_expected_no_longer_holds():
    assert decide(rec(WEST), rec(WEST), "present", (EAST,)).action == "none"


def test_a_different_value_is_replaced():
    assert decide(rec(EAST), rec(WEST), "present", None).action == "replace"


def test_a_different_ttl_alone_is_replaced():
    assert decide(rec(WEST, ttl=300), rec(WEST), "present", None).action == "replace"


def test_a_swap_whose_expected_value_holds_is_sent():
    assert decide(rec(EAST), rec(WEST), "present", (EAST,)).action == "replace"


def test_a_swap_whose_expected_value_no_longer_holds_fails_naming_both():
    third = "10.231.3.11"
    with pytest.raises(CompareAndSwapFailed, match=rf"holds {third}, not the expected {EAST}"):
        decide(rec(third), rec(WEST), "present", (EAST,))


def test_expecting_absence_fails_when_the_record_exists():
    with pytest.raises(CompareAndSwapFailed, match="not the expected nothing"):
        decide(rec(EAST), rec(WEST), "present", ())


def test_expecting_absence_creates_a_missing_record():
    assert decide(rec(), rec(WEST), "present", ()).action == "replace"


def test_deleting_a_missing_record_needs_nothing_and_an_existing_one_is_deleted():
    assert decide(rec(), rec(), "absent", None).action == "none"
    assert decide(rec(EAST), rec(), "absent", None).action == "delete"


def test_values_are_compared_in_canonical_form():
    assert canonical(["10.231.2.11", "10.231.1.11", "10.231.2.11"], "A", ZONE) == (EAST, WEST)
    assert canonical(["db-ro.us-west"], "CNAME", ZONE) == ("db-ro.us-west.baton.internal.",)
    assert canonical(["hello"], "TXT", ZONE) == ('"hello"',)


@pytest.mark.parametrize(("values", "rdtype", "sentence"), [
    (["10.231.2.300"], "A", "'10.231.2.300' is not a valid A value"),
    (["a.example.", "b.example."], "CNAME", "a CNAME record holds exactly one value"),
])
def test_bad_values_are_one_sentence(values, rdtype, sentence):
    with pytest.raises(DnsError, match=sentence):
        canonical(values, rdtype, ZONE)


def test_names_are_made_absolute_and_must_be_inside_the_zone():
    assert absolute_name("@", ZONE) == ZONE
    assert absolute_name("db.baton.internal.", ZONE) == DB
    with pytest.raises(DnsError, match=r"is not in zone baton\.internal\."):
        absolute_name("db.example.com.", ZONE)


@pytest.mark.parametrize(("text", "server"), [
    ("10.231.0.11", Server("10.231.0.11", 53)),
    ("10.231.0.11:5353", Server("10.231.0.11", 5353)),
    ("[2001:db8::1]:53", Server("2001:db8::1", 53)),
    ("2001:db8::1", Server("2001:db8::1", 53)),
])
def test_server_addresses_take_an_optional_port(text, server):
    assert parse_server(text) == server


def test_a_bad_server_address_is_one_sentence():
    with pytest.raises(DnsError, match="is not a name server address"):
        parse_server("10.231.0.11:dns")
