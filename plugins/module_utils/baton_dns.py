"""DNS client of Baton's modules: authoritative reads and TSIG-signed RFC 2136 updates.

The decision (what to send, if anything) is a pure function of what was read: `decide`.
Every error is a DnsError whose message is one sentence naming the server and what to do.
"""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

RDTYPES = ("A", "AAAA", "CNAME", "TXT")
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1",
              "hmac-md5")


class DnsError(Exception):
    """A DNS read or update failed; str() is the one-sentence message for the operator."""


class CompareAndSwapFailed(DnsError):
    """The record no longer holds the value the caller expected: nothing was changed."""


@dataclass(frozen=True)
class Server:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return self.host if self.port == 53 else f"{self.host}:{self.port}"


def parse_server(text: str, default_port: int = 53) -> Server:
    """'10.0.0.1', '10.0.0.1:5353', '[2001:db8::1]:53' or '2001:db8::1' -> Server."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = ""
    if not host or (port and not port.isdigit()):
        raise DnsError(f"'{text}' is not a name server address: write it as an IP address, "
                       "optionally with ':port'")
    return Server(host, int(port) if port else default_port)


@dataclass(frozen=True)
class Record:
    """One record set: its absolute name, type, the values in canonical text, and the TTL."""

    name: dns.name.Name
    rdtype: str
    values: tuple[str, ...]
    ttl: int | None = None

    def text(self) -> str:
        """The record set as zone-file lines (what a diff shows); '' when it does not exist."""
        return "".join(f"{self.name} {self.ttl} IN {self.rdtype} {v}\n" for v in self.values)


def absolute_name(name: str, zone: dns.name.Name) -> dns.name.Name:
    """'db' (relative to the zone), 'db.baton.internal.' or '@' (the apex) -> absolute name."""
    if name in ("@", ""):
        return zone
    absolute = dns.name.from_text(name, origin=zone)
    if not absolute.is_subdomain(zone):
        raise DnsError(f"record {name} is not in zone {zone}: give a name inside the zone, "
                       "relative to it or ending in a dot")
    return absolute


def canonical(values: list[str], rdtype: str, zone: dns.name.Name) -> tuple[str, ...]:
    """The values as the server will hold them (sorted, unique, names made absolute)."""
    out = set()
    for value in values:
        try:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=zone,
                                        relativize=False)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsError(f"'{value}' is not a valid {rdtype} value ({exc}): fix the "
                           "record's values") from exc
        out.add(rdata.to_text(origin=None, relativize=False))
    if rdtype == "CNAME" and len(out) > 1:
        raise DnsError("a CNAME record holds exactly one value: give one")
    return tuple(sorted(out))


@dataclass(frozen=True)
class Decision:
    action: str  # "none", "replace" or "delete"
    reason: str


def decide(current: Record, desired: Record, state: str,
           expected: tuple[str, ...] | None) -> Decision:
    """What to send, from what the primary holds now. Pure.

    `expected` (compare-and-swap): the values the caller believes the record holds, () for
    "does not exist"; None for no condition. A record that already holds the desired state
    needs nothing whatever `expected` says, so a re-run after a successful swap is ok.
    Raises CompareAndSwapFailed when a change is needed but the record holds something else.
    """
    if state == "absent":
        if not current.values:
            return Decision("none", f"{desired.name} {desired.rdtype} does not exist")
    elif current.values == desired.values and current.ttl == desired.ttl:
        return Decision("none", f"{desired.name} {desired.rdtype} already holds "
                                f"{', '.join(desired.values)} (TTL {desired.ttl})")
    if expected is not None and current.values != expected:
        holds = ", ".join(current.values) or "nothing"
        wanted = ", ".join(expected) or "nothing"
        raise CompareAndSwapFailed(
            f"{desired.name} {desired.rdtype} holds {holds}, not the expected {wanted}: another "
            "run or an operator changed it; nothing was sent: assess again before retrying")
    if state == "absent":
        return Decision("delete", f"delete {desired.name} {desired.rdtype}")
    return Decision("replace", f"set {desired.name} {desired.rdtype} to "
                               f"{', '.join(desired.values)} (TTL {desired.ttl})")


def _exchange(message: dns.message.Message, server: Server, timeout: float,
              tcp: bool) -> dns.message.Message:
    try:
        if tcp:
            return dns.query.tcp(message, server.host, port=server.port, timeout=timeout)
        response, _ = dns.query.udp_with_fallback(message, server.host, port=server.port,
                                                  timeout=timeout)
        return response
    except dns.tsig.PeerBadKey as exc:
        raise DnsError(f"{server} does not know the TSIG key (BADKEY): check the key name "
                       "against the server's key") from exc
    except dns.tsig.PeerBadSignature as exc:
        raise DnsError(f"{server} rejected the TSIG signature (BADSIG): the key's secret or "
                       "algorithm is wrong") from exc
    except dns.tsig.PeerBadTime as exc:
        raise DnsError(f"{server} rejected the TSIG time (BADTIME): the controller's and the "
                       "server's clocks differ by more than the fudge; fix time sync") from exc
    except dns.tsig.PeerError as exc:
        raise DnsError(f"{server} rejected the TSIG signature ({exc}): check the key") from exc
    except dns.exception.Timeout as exc:
        raise DnsError(f"{server} did not answer within {timeout:g} s: check that it is up "
                       f"and reachable on port {server.port}") from exc
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsError(f"{server}: {exc.__class__.__name__}: {exc}: check that the name server "
                       f"is up and reachable on port {server.port}") from exc


def read(server: Server, zone: dns.name.Name, name: dns.name.Name, rdtype: str,
         timeout: float) -> Record:
    """The record set as the server holds it (authoritative answer only)."""
    response = _exchange(dns.message.make_query(name, rdtype), server, timeout, tcp=False)
    rcode = response.rcode()
    if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH) or (
            rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
            and not response.flags & dns.flags.AA):
        raise DnsError(f"{server} is not authoritative for zone {zone} "
                       f"({dns.rcode.to_text(rcode)}): check the zone name and the server list")
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DnsError(f"{server} answered {dns.rcode.to_text(rcode)} for {name} {rdtype}: "
                       "check the name server's log")
    wanted = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == wanted:
            values = sorted(r.to_text(origin=None, relativize=False) for r in rrset)
            return Record(name, rdtype, tuple(values), rrset.ttl)
    return Record(name, rdtype, ())


def serial(server: Server, zone: dns.name.Name, timeout: float) -> int | None:
    """The zone's SOA serial on a server; None when it does not say."""
    response = _exchange(dns.message.make_query(zone, "SOA"), server, timeout, tcp=False)
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


@dataclass(frozen=True)
class Key:
    name: str
    secret: str
    algorithm: str = "hmac-sha256"

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        try:
            return dns.tsigkeyring.from_text({self.name: (self.algorithm, self.secret)})
        except (ValueError, TypeError, dns.exception.DNSException) as exc:
            raise DnsError(f"the TSIG secret of key {self.name} is not valid base64 ({exc}): "
                           "check it (from ansible-vault)") from exc


_UPDATE_RCODES = {
    dns.rcode.REFUSED: "refused the update (REFUSED): the zone takes only updates signed with "
                       "its TSIG key; check the key name and that the update is signed",
    dns.rcode.NOTAUTH: "refused the update (NOTAUTH): it is not the primary of zone {zone} or "
                       "does not accept this key; send updates to the zone's primary",
    dns.rcode.NOTZONE: "refused the update (NOTZONE): the record is outside zone {zone}",
    dns.rcode.SERVFAIL: "failed the update (SERVFAIL): check the name server's log (journal)",
    dns.rcode.FORMERR: "could not parse the update (FORMERR)",
}
_PREREQUISITE_RCODES = (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN,
                        dns.rcode.YXDOMAIN)


def update(server: Server, zone: dns.name.Name, desired: Record, action: str,
           expected: tuple[str, ...] | None, key: Key, timeout: float) -> None:
    """Send one signed update (with the compare-and-swap prerequisite when `expected`)."""
    update_many(server, zone, [(desired, action, expected)], key, timeout)


def update_many(server: Server, zone: dns.name.Name,
                changes: list[tuple[Record, str, tuple[str, ...] | None]], key: Key,
                timeout: float) -> None:
    """Send one signed update for several record sets, each change (desired, action,
    expected) with its compare-and-swap prerequisite when `expected`: the server applies all
    of them or none (RFC 2136 3.2), and bumps the zone's serial once (one NOTIFY, one
    transfer)."""
    message = dns.update.UpdateMessage(zone, keyring=key.keyring(),
                                       keyalgorithm=key.algorithm)
    for desired, _action, expected in changes:
        if expected is None:
            continue
        if expected:
            # Value-dependent "RRset exists" (RFC 2136 2.4.2): prerequisite TTLs are zero.
            message.present(desired.name, dns.rdataset.from_text_list(
                dns.rdataclass.IN, desired.rdtype, 0, list(expected)))
        else:
            message.absent(desired.name, desired.rdtype)
    for desired, action, _expected in changes:
        if action == "delete":
            message.delete(desired.name, desired.rdtype)
        else:
            message.replace(desired.name, dns.rdataset.from_text_list(
                dns.rdataclass.IN, desired.rdtype, desired.ttl, list(desired.values)))
    response = _exchange(message, server, timeout, tcp=True)
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR:
        return
    names = ", ".join(f"{d.name} {d.rdtype}" for d, _a, _e in changes)
    if rcode in _PREREQUISITE_RCODES:
        raise CompareAndSwapFailed(
            f"{server} refused the update ({dns.rcode.to_text(rcode)}): {names} changed "
            "between the read and the update (another run?); nothing was changed: assess "
            "again before retrying")
    text = _UPDATE_RCODES.get(rcode, dns.rcode.to_text(rcode) + ": check the server's log")
    raise DnsError(f"{server} " + text.format(zone=zone))


def wait_until_served(servers: list[Server], zone: dns.name.Name, desired: Record, state: str,
                      timeout: float, query_timeout: float,
                      interval: float = 0.25) -> dict[str, Any]:
    """Poll every server (in parallel) until each answers the desired values and TTL; per
    server, the values it answered last and the zone's serial then (None if unread).

    Raises DnsError naming the servers that still lag (and what they answer) at the deadline,
    which no single query can overrun by more than its own timeout.
    """
    wanted = (() if state == "absent" else desired.values,
              None if state == "absent" else desired.ttl)
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    pending = list(servers)

    def check(server: Server, budget: float) -> tuple[Server, dict[str, Any], bool]:
        try:
            held = read(server, zone, desired.name, desired.rdtype, budget)
        except DnsError as exc:
            return server, {"values": None, "error": str(exc)}, False
        answer: dict[str, Any] = {"values": list(held.values), "ttl": held.ttl}
        if (held.values, held.ttl if held.values else None) != wanted:
            return server, answer, False
        try:
            answer["serial"] = serial(server, zone, budget)
        except DnsError:
            answer["serial"] = None  # the record is served; the serial is only for the report
        return server, answer, True

    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        while True:
            budget = max(0.2, min(query_timeout, deadline - time.monotonic()))
            for server, answer, done in pool.map(lambda s, b=budget: check(s, b), pending):
                seen[str(server)] = answer
                if done:
                    pending.remove(server)
            if not pending:
                return seen
            if time.monotonic() >= deadline:
                lag = "; ".join(f"{s} answers {_describe(seen.get(str(s)))}" for s in pending)
                raise DnsError(f"after {timeout:g} s not every name server serves {desired.name} "
                               f"{desired.rdtype} {', '.join(wanted[0]) or '(deleted)'}: {lag}; "
                               "check their transfers from the primary (NOTIFY/IXFR)")
            time.sleep(interval)


def _describe(seen: dict[str, Any] | None) -> str:
    if not seen:
        return "nothing"
    if seen.get("error"):
        return f"an error ({seen['error']})"
    return (", ".join(seen["values"]) + f" (TTL {seen.get('ttl')})") if seen["values"] else \
        "no record"
