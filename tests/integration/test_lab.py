"""Lab tests on real containers, on the mini lab (one node per region) with the baton at home:
the lab comes up, every host answers, site.yml deploys the PostgreSQL tier (etcd, Patroni
standby clusters, HAProxy, PgBouncer), the witness and fence agents, the Redis tier (Redis
chained across regions, Sentinel), DNS (BIND primary and secondaries) and monitoring (exporters,
regional and global Prometheus) and then changes nothing; rows and keys cross regions, signed
DNS updates reach every secondary and others are refused, the global Prometheus sees every
region, health.yml sees every region healthy; failover.yml's --check and its refusals (unknown
target, lagging target); the fault tools really cut traffic, and bad input gets one clear
sentence. Moving the baton is tested as whole outages under live clients in
test_lifecycle.py, on this same deployment (see conftest.py for the order).

Needs root, podman and iptables (`make deps` installs them). Replaces any lab that is up.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import psycopg
import pytest
import redis
import redis.sentinel
import yaml
from harness import REDIS_TLS
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"),
           ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="false",
           PATH=f"{BIN}:{os.environ['PATH']}")
for _name in ("BATON_LAB_SIZE", "ANSIBLE_INVENTORY", "ANSIBLE_VAULT_PASSWORD_FILE"):
    ENV.pop(_name, None)  # the tests choose the lab and its inventory themselves
MINI = {"us-east-1": "10.231.1.11", "us-west-1": "10.231.2.11", "eu-west-1": "10.231.3.11",
        "global-1": "10.231.0.11"}
LISTEN_PORT = 18080
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


# Commands run on the lab so far but health.yml (a read-only assessment): what lets a check
# tell that nothing acted on the lab since the last health.yml (test_lifecycle.py's `home`).
ACTIONS = [0]


def sh(*cmd: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run cmd; its output goes to files, not pipes, so that a process it leaves behind cannot
    hold the run open, and a run that times out shows where it stopped."""
    if "health.yml" not in cmd:
        ACTIONS[0] += 1
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                text=True, env=env or ENV, cwd=ROOT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out.seek(0)
            raise AssertionError(f"{' '.join(cmd)} still ran after {timeout} s; its output "
                                 f"ends with:\n{out.read()[-4000:]}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(cmd), code, out.read(), err.read())


def labctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh(sys.executable, str(ROOT / "lab/labctl.py"), *args, env=env)


# The SSH lab: the same lab reached as VMs are (inventories/lab-ssh: SSH as baton-admin with
# sudo, host keys checked, secrets in ansible-vault). Tests that take the `over_ssh` fixture run
# every playbook through it.
SSH_INVENTORY = ("-i", str(ROOT / "inventories/lab-ssh"), "--vault-password-file",
                 str(ROOT / "lab/vault-password"))
VIA_SSH: list[bool] = []  # non-empty while a test drives the lab over SSH


# Wall seconds and runs per playbook (conftest.py prints them at the end of the run).
PLAYBOOK_SECONDS: dict[str, list[float]] = {}


def timed(name: str, started: float) -> None:
    PLAYBOOK_SECONDS.setdefault(name, []).append(time.monotonic() - started)


def playbook(name: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    via = SSH_INVENTORY if VIA_SSH else ()
    started = time.monotonic()
    try:
        return sh(str(BIN / "ansible-playbook"), *via, name, *args, timeout=timeout)
    finally:
        timed(name, started)


def playbook_as_awx(name: str, survey: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """A playbook run as an AWX job runs it: through ansible-runner (its event callback, no
    prompt answered, the project's directory and ansible.cfg, the survey's answers as extra
    variables with their survey types). The result carries `artifacts`, what the run gave
    set_stats (an AWX job's artifacts)."""
    import ansible_runner

    env = {k: v for k, v in ENV.items() if k != "ANSIBLE_CONFIG"}  # the project's, by its cwd
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="baton-awx-job-") as job:
        run = ansible_runner.run(private_data_dir=job, project_dir=str(ROOT), playbook=name,
                                 inventory=str(ROOT / "inventories/lab"), extravars=survey,
                                 envvars=env, quiet=True, timeout=int(timeout))
        stdout = run.stdout.read()
        stats = next((e["event_data"] for e in run.events if e["event"] == "playbook_on_stats"),
                     {})
    timed(f"{name} (as an AWX job)", started)
    done = subprocess.CompletedProcess(["ansible-runner", name], run.rc, stdout, "")
    done.artifacts = stats.get("artifact_data", {})
    return done


def ansible(pattern: str, *args: str, ssh: bool = False) -> subprocess.CompletedProcess:
    """An ad-hoc command (`ansible PATTERN ...`) through the default or the SSH inventory."""
    return sh(str(BIN / "ansible"), *(SSH_INVENTORY if ssh else ()), pattern, *args, timeout=300)


def pings(src: str, dst: str) -> bool:
    return sh("podman", "exec", f"baton-{src}", "ping", "-c", "1", "-W", "1", MINI[dst],
              timeout=30).returncode == 0


def stalled_witness_links() -> list[str]:
    """The witness's peer connections (port 2392) still retransmitting into a partition that
    has healed: their next retransmission is up to 6.4 s away (tcp_retries2 5, see the common
    role), and the stream carries nothing until then. A second fault meanwhile (the witness
    leader's region stopping) finds the members unable to elect for those seconds, and the
    holder's agent fences after baton_fence_after: a known limit, not what a test after the
    heal is about."""
    stalled = []
    for host in ("us-east-1", "us-west-1", "eu-west-1"):
        proc = sh("podman", "exec", f"baton-{host}", "ss", "-tinH", "state", "established",
                  "( sport = :2392 or dport = :2392 )", timeout=30)
        lines = proc.stdout.splitlines()
        for peer, info in zip(lines[::2], lines[1::2], strict=False):
            if "backoff:" in info:
                stalled.append(f"{host}: {' '.join(peer.split()[-2:])}")
    return stalled


def wait_witness_links(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (stalled := stalled_witness_links()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stalled, f"witness peer links still stalled {timeout:g} s after the heal: {stalled}"


def controller_reaches(host: str) -> bool:
    try:
        with socket.create_connection((MINI[host], LISTEN_PORT), timeout=1):
            return True
    except OSError:
        return False


def lab_containers() -> list[dict]:
    return json.loads(sh("podman", "ps", "-a", "--filter", "label=baton.lab=1", "--format",
                         "json").stdout or "[]")


def recap(output: str) -> dict[str, tuple[int, int, int]]:
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.finditer(output)}


def changed_tasks(output: str) -> list[str]:
    """'host: task' for each change a playbook run reported: what an idempotence failure says."""
    task, found = "", []
    for line in output.splitlines():
        if started := re.match(r"(?:TASK|RUNNING HANDLER) \[(.+?)\] \*", line):
            task = started[1]
        elif changed := re.match(r"changed: \[([^\]]+)\]", line):
            found.append(f"{changed[1]}: {task}")
    return found


def assert_nothing_changed(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stdout[-3000:]
    changed = {host: n for host, (n, _u, _f) in recap(run.stdout).items() if n}
    assert changed == {}, changed_tasks(run.stdout)


DEPLOYED: list[bool] = []  # set once site.yml has deployed the mini lab in this session


@pytest.fixture()
def lab(mini_lab):
    """The mini lab of this session (tests/integration/conftest.py), up."""
    yield


def test_every_lab_host_answers_by_region(lab):
    status = json.loads(labctl("status", "--json").stdout)
    assert status["size"] == "mini"
    assert {h["name"]: (h["site"], h["state"], h["systemd"]) for h in status["hosts"]} == {
        "us-east-1": ("us-east", "running", "running"),
        "us-west-1": ("us-west", "running", "running"),
        "eu-west-1": ("eu-west", "running", "running"),
        "global-1": ("global", "running", "running"),
    }
    ping = sh(str(BIN / "ansible"), "all", "-m", "ansible.builtin.ping", "-o")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sorted(re.findall(r"^(\S+) \| SUCCESS", ping.stdout, re.M)) == sorted(MINI)


def test_lab_up_again_creates_nothing_new(lab):
    before = sorted(c["Id"] for c in lab_containers())
    again = labctl("up", "--size", "mini")
    assert again.returncode == 0, again.stderr
    assert sorted(c["Id"] for c in lab_containers()) == before
    networks = sh("podman", "network", "ls", "--filter", "label=baton.lab=1", "--format",
                  "{{.Name}}").stdout.split()
    assert sorted(networks) == ["baton-eu-west", "baton-us-east", "baton-us-west", "baton-wan"]


def test_site_yml_converges_the_lab(lab, over_ssh):
    """The cold deploy, as users deploy VMs: over SSH through inventories/lab-ssh (baton-admin,
    sudo, host keys checked, the vault). Its re-run must change nothing: asserted by
    test_lifecycle.py's run of site.yml after every move, through the default inventory (a
    stronger form of the same check, on the same deployment, which also proves that both
    inventories deploy the same lab), so that the suite pays for one idempotence run, not
    two."""
    first = playbook("site.yml")
    assert first.returncode == 0, first.stdout[-3000:]
    assert set(MINI) <= set(recap(first.stdout))
    DEPLOYED.append(True)


def adhoc_results(run: subprocess.CompletedProcess) -> dict[str, tuple[str, str]]:
    """host -> (status, first output line) from `ansible`'s ad-hoc output."""
    found = {}
    for m in re.finditer(r"^(\S+) \| (\w+)(?: \| rc=\d+)?(?: >>|!| =>)\s*\n?(.*)$", run.stdout,
                         re.M):
        found[m[1]] = (m[2], m[3].strip())
    return found


def test_the_ssh_inventory_reaches_every_node_as_an_unprivileged_user_with_sudo(lab, tmp_path):
    """inventories/lab-ssh, as production reaches VMs: SSH as baton-admin (sshd refuses root
    and passwords), sudo for the tasks, and the host keys checked against the lab's
    known_hosts (a wrong key is refused). The lifecycle drives whole moves through it (tests
    with `over_ssh`)."""
    plain = ansible("all", "-m", "ansible.builtin.command", "-a", "id -un", "-e",
                    "ansible_become=false", ssh=True)
    assert {h: r for h, r in adhoc_results(plain).items()} == \
        {h: ("CHANGED", "baton-admin") for h in MINI}, plain.stdout[-2000:]
    root = ansible("all", "-m", "ansible.builtin.command", "-a", "id -un", ssh=True)
    assert {h: r for h, r in adhoc_results(root).items()} == \
        {h: ("CHANGED", "root") for h in MINI}, root.stdout[-2000:]
    for host in MINI:  # the daemon's own word: no root, no passwords, keys only
        config = sh("podman", "exec", f"baton-{host}", "sshd", "-T", timeout=30).stdout
        for setting in ("permitrootlogin no", "passwordauthentication no",
                        "kbdinteractiveauthentication no", "pubkeyauthentication yes"):
            assert setting in config.splitlines(), (host, setting)
    fresh = "-o ControlMaster=no -o ControlPath=none"  # no reuse of a verified connection
    known = (ROOT / ".lab/ssh/known_hosts").read_text().splitlines()
    keys = {line.split()[0].split(",")[1]: line.split(None, 1)[1] for line in known}
    assert set(keys) == set(MINI), known
    forged = tmp_path / "known_hosts"  # us-east-1 listed with us-west-1's host key
    forged.write_text(f"{MINI['us-east-1']},us-east-1 {keys['us-west-1']}\n")
    spoofed = ansible("us-east-1", "-m", "ansible.builtin.ping", "-e",
                      f"ansible_ssh_args='{fresh}'", "-e",
                      f"ansible_ssh_common_args='-o UserKnownHostsFile={forged} "
                      "-o StrictHostKeyChecking=yes'", ssh=True)
    assert spoofed.returncode != 0 and "UNREACHABLE" in spoofed.stdout, spoofed.stdout[-2000:]
    assert "host key" in spoofed.stdout.lower() or "IDENTIFICATION" in spoofed.stdout, \
        spoofed.stdout[-2000:]


APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 3}  # lab throwaway
REDIS_PASSWORD = "lab-redis-not-secret"  # lab throwaway (inventories/lab secrets.yml)
SENTINEL_PASSWORD = "lab-sentinel-not-secret"  # lab throwaway


def cluster_roles(host: str) -> dict[str, tuple[str, str]]:
    from harness import open_tls, patroni_url

    with open_tls(patroni_url(MINI[host], "/cluster"), 3) as resp:
        data = json.loads(resp.read())
    return {m["name"]: (m["role"], m["state"]) for m in data["members"]}


def member(host: str) -> dict:
    from harness import open_tls, patroni_url

    with open_tls(patroni_url(MINI[host], "/patroni"), 3) as resp:
        return json.loads(resp.read())


def pgbouncer(host: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(host=MINI[host], port=6432, dbname=dbname, autocommit=True, **APP)


def cache(host: str, port: int = 6379) -> redis.Redis:
    """A client of host's Redis (or, with port 26379, its Sentinel)."""
    password = SENTINEL_PASSWORD if port == 26379 else REDIS_PASSWORD
    return redis.Redis(host=MINI[host], port=port, password=password, socket_timeout=2,
                       socket_connect_timeout=2, decode_responses=True, **REDIS_TLS)


def redis_pids() -> dict[str, tuple[str, str]]:
    """host -> (redis-server's PID, redis-sentinel's PID), as systemd reports them."""
    pids = {}
    for host in ("us-east-1", "us-west-1", "eu-west-1"):
        shown = sh("podman", "exec", f"baton-{host}", "systemctl", "show", "-p", "MainPID",
                   "--value", "redis-server", "redis-sentinel", timeout=30).stdout.split()
        pids[host] = (shown[0], shown[1])
    return pids


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, psycopg.Error, redis.RedisError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s (last: {last!r})")


def test_each_region_reports_its_patroni_role(lab):
    assert cluster_roles("us-east-1") == {"us-east-1": ("leader", "running")}
    assert cluster_roles("us-west-1") == {"us-west-1": ("standby_leader", "streaming")}
    assert cluster_roles("eu-west-1") == {"eu-west-1": ("standby_leader", "streaming")}


def test_patronis_rest_api_refuses_a_write_without_its_password(lab):
    """Whoever reaches port 8008 (HTTPS only) reads the cluster, but changing its
    configuration (say, dropping a standby cluster's standby_cluster) or its switchovers needs
    the REST password."""
    base = f"https://{MINI['us-west-1']}:8008"
    status, body = web_request(f"{base}/config", user=None)
    assert status == 200
    # HTTPS only: plain HTTP gets no answer, so the password never crosses the network in clear.
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{MINI['us-west-1']}:8008/config", timeout=5).read()
    # The same value back (harmless if it were accepted), as anyone could send it.
    same = json.dumps({"loop_wait": json.loads(body)["loop_wait"]}).encode()
    for user, password in ((None, ""), ("patroni", "wrong")):
        for method, path, data in (("PATCH", "/config", same), ("DELETE", "/switchover", None)):
            code = web_request(f"{base}{path}", data, user=user, password=password,
                               method=method)[0]
            assert code == 401, (method, path, user, code)


def foreign_client_tls(trusted_ca: Path):
    """A TLS context that trusts the lab's CA but presents a client certificate of a CA made
    here and now (not the Baton CA), as a stranger on the network could."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not Baton")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(
        NameOID.ORGANIZATIONAL_UNIT_NAME, "controller")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    folder = Path(tempfile.mkdtemp())
    (folder / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "client.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(cafile=str(trusted_ca))
    context.load_cert_chain(str(folder / "client.crt"), str(folder / "client.key"))
    return context


def test_the_etcd_clusters_refuse_clients_without_a_certificate_and_a_login(lab):
    """Both etcd clusters (the witness on 2391, a region's own on 2379) speak TLS only and ask
    every client for a certificate of the Baton CA and an etcd login; /metrics and /health
    are plain HTTP on their own ports (2393, 2381) and reach no key. Identity is the login,
    not the certificate: etcd's JSON gateway, which Patroni and Baton's clients speak, does not
    take a user from a certificate; each user's role holds it to its purpose's keys."""
    import ssl

    from baton_witness import Witness, WitnessError
    from harness import PKI_DIR

    us_east = MINI["us-east-1"]
    for port in (2391, 2379):
        # Plain HTTP, as anyone on the network could send it: not even an answer.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(urllib.request.Request(
                f"http://{us_east}:{port}/v3/kv/range", data=b'{"key": "L2JhdG9uL2hvbGRlcg=="}',
                method="POST"), timeout=5).read()
        # TLS that trusts the Baton CA but shows no client certificate: the handshake fails.
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(urllib.request.Request(
                f"https://{us_east}:{port}/v3/kv/range", data=b'{"key": "L2JhdG9uL2hvbGRlcg=="}',
                method="POST"), timeout=5,
                context=ssl.create_default_context(cafile=str(PKI_DIR / "ca.crt"))).read()
        # A certificate of another CA (made here, as anyone could): the handshake fails.
        with pytest.raises(OSError):
            urllib.request.urlopen(urllib.request.Request(
                f"https://{us_east}:{port}/v3/kv/range", data=b'{"key": "L2JhdG9uL2hvbGRlcg=="}',
                method="POST"), timeout=5, context=foreign_client_tls(PKI_DIR / "ca.crt")).read()
        # A certificate but no login: no user, no permission.
        anonymous = Witness([f"{us_east}:{port}"], 5, client={
            "ca_file": str(PKI_DIR / "ca.crt"), "cert_file": str(PKI_DIR / "controller.crt"),
            "key_file": str(PKI_DIR / "controller.key"), "key_password": "lab-ca-not-secret"})
        with pytest.raises(WitnessError, match=r"permission denied|user name is empty"):
            anonymous.get("/baton/holder")
        # /health on the plain-HTTP metrics port answers, without any key.
        with urllib.request.urlopen(f"http://{us_east}:{port + 2}/health", timeout=5) as resp:
            assert json.loads(resp.read())["health"] == "true"
    # A wrong password: the login is refused.
    with pytest.raises(WitnessError, match="login of etcd user 'baton-controller'"):
        witness("baton-controller", password="wrong").get("/baton/holder")

    # The witness: us-west's nodes read the holder and keep us-west's liveness keys, nothing
    # else: they cannot move the baton, take the lock, or touch us-east's keys.
    west = witness("baton-site-us-west")
    held = west.get("/baton/holder")
    assert held is not None and json.loads(held.value)["region"] == "us-east"
    for attempt in (lambda: west.put("/baton/holder", held.value),
                    lambda: west.delete("/baton/holder"),
                    lambda: west.create("/baton/lock", "{}"),
                    lambda: west.put("/baton/alive/us-east/intruder", "{}"),
                    lambda: west.get_prefix("/baton/alive/us-east/"),
                    lambda: west.put("/baton/dns_primary", '{"host": "us-west-1"}')):
        with pytest.raises(WitnessError, match="permission denied"):
            attempt()
    lease = west.grant(5)
    west.put("/baton/alive/us-west/test-probe", "{}", lease)
    assert west.revoke(lease)
    assert json.loads(witness().get("/baton/holder").value) == json.loads(held.value)

    # A region's own etcd: Patroni's user reaches its own scope only; another region's
    # Patroni password is not this cluster's.
    from harness import etcd_client

    dcs = Witness([f"{us_east}:2379"], 5,
                  client=etcd_client("patroni", cluster="baton-us-east"))
    assert dcs.get("/baton/baton-us-east/config") is not None
    for attempt in (lambda: dcs.get("/baton/holder"),
                    lambda: dcs.put("/baton/baton-us-west/config", "{}"),
                    lambda: dcs.put("/elsewhere", "x")):
        with pytest.raises(WitnessError, match="permission denied"):
            attempt()
    foreign = Witness([f"{us_east}:2379"], 5,
                      client=etcd_client("patroni", cluster="baton-us-west"))
    with pytest.raises(WitnessError, match="login of etcd user 'patroni'"):
        foreign.get("/baton/baton-us-east/config")


def test_postgresql_speaks_tls_to_other_addresses_and_replication_checks_the_server(lab):
    """Every connection to PostgreSQL from another address uses TLS: the standby regions'
    replication (through HAProxy, sslmode verify-full against the Baton CA), PgBouncer's
    server connections (verify-ca); a plain-text login from another address is refused."""
    from harness import PKI_DIR

    # The monitoring user (pg_monitor) sees every session's row; lab throwaway password.
    leader = psycopg.connect(host=MINI["us-east-1"], port=5432, dbname="app",
                             sslmode="verify-full", sslrootcert=str(PKI_DIR / "ca.crt"),
                             autocommit=True, user="baton_monitor",
                             password="lab-monitor-not-secret", connect_timeout=3)
    with leader:
        rows = leader.execute(
            "SELECT r.application_name, s.ssl, r.state FROM pg_stat_replication r "
            "JOIN pg_stat_ssl s USING (pid)").fetchall()
        assert {name for name, _ssl, _state in rows} >= {"us-west-1", "eu-west-1"}, rows
        assert all(ssl for _name, ssl, _state in rows), rows
        # This connection itself: verify-full passed against the Baton CA.
        assert leader.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                              ).fetchone()[0] is True
    # PgBouncer in another region reaches the leader through HAProxy over TLS.
    with pgbouncer("us-west-1", "app") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone()[0] is True
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host=MINI["us-east-1"], port=5432, dbname="app", sslmode="disable",
                        **APP).close()
    # A server whose certificate is not the Baton CA's would not be trusted: the client's
    # check is real (the system's CAs do not know the lab's).
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(host=MINI["us-east-1"], port=5432, dbname="app", sslmode="verify-full",
                        sslrootcert="system", **APP).close()


def pgbackrest(node: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """pgBackRest on a lab node, as postgres (as PostgreSQL's archive_command runs it)."""
    return sh("podman", "exec", f"baton-{node}", "runuser", "-u", "postgres", "--",
              "pgbackrest", "--stanza=baton", *args, timeout=timeout)


def test_the_primary_archives_its_wal_into_the_encrypted_repository_on_the_global_site(lab):
    """pgbackrest check on the holder's leader: a WAL switch, archived asynchronously over TLS
    into the global site's repository, found there. The repository is encrypted (the stanza's
    files are OpenSSL-enciphered, "Salted__"), and nobody but a region node's certificate gets
    in: a certificate of the Baton CA without a region node's name is refused."""
    check = pgbackrest("us-east-1", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    info = pgbackrest("global-1", "--output=json", "info")
    assert info.returncode == 0, info.stdout + info.stderr
    stanza = json.loads(info.stdout)[0]
    archives = [a for a in stanza["archive"] if a.get("max")]
    assert stanza["name"] == "baton" and archives, stanza
    head = sh("podman", "exec", "baton-global-1", "head", "-c", "8",
              "/var/lib/pgbackrest/archive/baton/archive.info", timeout=30)
    assert head.stdout == "Salted__", head.stdout
    # A standby region's node reads the repository with its certificate that names it (status
    # 2: no backup yet); with its other certificate of the Baton CA, which names nobody, the
    # repository host hangs up (pgBackRest's info exits 0 and says so in its status).
    def status(*args: str) -> dict:
        run = pgbackrest("eu-west-1", "--output=json", *args, "info")
        return json.loads(run.stdout)[0]["repo"][0]["status"]
    assert status()["code"] in (0, 2), status()
    refused = status("--repo1-host-cert-file=/etc/ssl/baton/node.crt")
    assert refused["code"] == 99 and "TLS error" in refused["message"], refused


def scratch_sql(node: str, sql: str, port: int = 5499) -> subprocess.CompletedProcess:
    """SQL in the scratch cluster restore.yml leaves on node (loopback only: from inside)."""
    return sh("podman", "exec", f"baton-{node}", "runuser", "-u", "postgres", "--", "psql",
              "-p", str(port), "-h", "/var/run/postgresql", "-d", "app", "-XAtc", sql,
              timeout=60)


def rows_then_drop(table: str, rows: int) -> str:
    """In us-east, through its PgBouncer: table with ids 1..rows, the time noted 1.5 s later,
    the table dropped 1.5 s after that. The time (UTC, with its zone): a restore to it brings
    every row back."""
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, {rows})")
        time.sleep(1.5)
        target = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', "
                              "'YYYY-MM-DD HH24:MI:SS.US') || '+00'").fetchone()[0]
        time.sleep(1.5)
        conn.execute(f"DROP TABLE {table}")
    return target


def test_restore_yml_brings_a_dropped_table_back_into_a_scratch_cluster_only(lab):
    """Rows written, the time noted, the table dropped: restore.yml to that time puts every
    row back in a scratch cluster in eu-west; production still has no table and restarted
    nothing. A second restore is refused while the scratch cluster is there (nothing changed);
    the cleanup removes it, and its re-run changes nothing. The backup it starts from is the
    one the deploy took by itself, in the background, for the new stanza."""
    def backups() -> list:
        run = pgbackrest("global-1", "--output=json", "info")
        return json.loads(run.stdout)[0]["backup"] if run.returncode == 0 else []
    deadline = time.monotonic() + 600
    while not backups() and time.monotonic() < deadline:
        time.sleep(3)
    assert [b["type"] for b in backups()][:1] == ["full"], backups()
    starts = {n: member(n)["postmaster_start_time"] for n in ("us-east-1", "eu-west-1")}
    target = rows_then_drop("baton_restore_probe", 500)
    check = pgbackrest("us-east-1", "check")  # a WAL switch, archived: the drop is in the repo
    assert check.returncode == 0, check.stdout + check.stderr

    plan = playbook("restore.yml", "--check", "-e", f"target_time='{target}'",
                    "-e", "region=eu-west")
    assert plan.returncode == 0 and "estimated" in plan.stdout, plan.stdout[-3000:]
    assert sh("podman", "exec", "baton-eu-west-1", "test", "-e",
              "/var/lib/postgresql/baton-restore").returncode == 1  # the plan made nothing

    run = playbook("restore.yml", "-e", f"target_time='{target}'", "-e", "region=eu-west")
    assert run.returncode == 0, run.stdout[-4000:]
    rows = scratch_sql("eu-west-1", "SELECT count(*), max(id) FROM baton_restore_probe")
    assert rows.stdout.strip() == "500|500", rows.stdout + rows.stderr
    assert scratch_sql("eu-west-1", "CREATE TABLE scratch_write (x int)").returncode == 0
    with pgbouncer("us-east-1", "app") as conn:
        assert conn.execute("SELECT to_regclass('baton_restore_probe')").fetchone()[0] is None
    assert {n: member(n)["postmaster_start_time"] for n in starts} == starts
    again = playbook("restore.yml", "-e", f"target_time='{target}'", "-e", "region=eu-west")
    assert again.returncode != 0 and "from an earlier restore" in again.stdout, \
        again.stdout[-2000:]

    clean = playbook("restore.yml", "-e", "restore_cleanup=true", "-e", "region=eu-west")
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert scratch_sql("eu-west-1", "SELECT 1").returncode != 0
    clean_again = playbook("restore.yml", "-e", "restore_cleanup=true", "-e", "region=eu-west")
    assert clean_again.returncode == 0 and total_changed(clean_again) == 0, \
        clean_again.stdout[-2000:]


def test_restore_yml_refuses_a_time_before_the_oldest_backup_in_one_sentence(lab):
    run = playbook("restore.yml", "-e", "target_time='2001-01-01 00:00:00+00'",
                   "-e", "region=eu-west")
    assert run.returncode != 0
    assert "is before the oldest backup's end" in run.stdout and "Nothing was changed" in \
        run.stdout, run.stdout[-2000:]


def test_with_the_regions_own_repository_deleted_a_restore_comes_from_the_global_one(lab):
    """us-east holds the baton: its WAL goes into its own repository (repo2, on us-east-1) and
    into the global site's (repo1), and the deploy took a first full backup into each. A restore
    in us-east is planned from its own. With that repository deleted, restore.yml passes over it
    and brings every row back from the global site's; site.yml puts the region's repository
    back, and archiving reaches both again."""
    region_conf = "--config=/etc/pgbackrest/region-backup.conf"

    def region_backups() -> list:
        run = pgbackrest("us-east-1", region_conf, "--repo=2", "--output=json", "info")
        return json.loads(run.stdout)[0].get("backup", []) if run.returncode == 0 else []
    wait_for(lambda: region_backups() != [], 600, "the deploy's backup in us-east's repository")
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute("DROP TABLE IF EXISTS baton_repo_probe")
        conn.execute("CREATE TABLE baton_repo_probe (id int PRIMARY KEY)")
        conn.execute("INSERT INTO baton_repo_probe SELECT generate_series(1, 300)")
    check = pgbackrest("us-east-1", "check")  # a WAL switch, found archived in both
    assert check.returncode == 0, check.stdout + check.stderr
    plan = playbook("restore.yml", "--check", "-e", "region=us-east")
    assert plan.returncode == 0 and "repository repo2" in plan.stdout, plan.stdout[-3000:]

    gone = sh("podman", "exec", "baton-us-east-1", "sh", "-c",
              "rm -rf /var/lib/pgbackrest-region/* && ls -A /var/lib/pgbackrest-region | wc -l")
    assert gone.stdout.strip() == "0", gone.stdout + gone.stderr
    try:
        run = playbook("restore.yml", "-e", "region=us-east")
        assert run.returncode == 0, run.stdout[-4000:]
        assert "repository repo1" in run.stdout and "passed over repo2" in run.stdout, \
            run.stdout[-3000:]
        rows = scratch_sql("us-east-1", "SELECT count(*) FROM baton_repo_probe")
        assert rows.stdout.strip() == "300", rows.stdout + rows.stderr
    finally:
        clean = playbook("restore.yml", "-e", "restore_cleanup=true", "-e", "region=us-east")
        back = playbook("site.yml", "--tags", "pgbackrest")
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert back.returncode == 0 and "Create the stanza in the region's repository" in back.stdout, \
        back.stdout[-3000:]
    check = pgbackrest("us-east-1", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_restore_in_place_takes_production_back_and_every_region_follows(lab):
    """The guarded option: without confirm=<stanza>@<holder> nothing changes. Rows written, the
    time noted, the table dropped and another created: restore.yml in place to that time brings
    the rows back in us-east's production cluster (through its PgBouncer, as a client reads),
    the table created after the time is gone, writes go on, the baton stays, the other regions
    are cloned afresh and follow (health.yml passes), and the re-run changes nothing."""
    refused = playbook("restore.yml", "-e", "in_place=true")
    assert refused.returncode != 0 and "-e confirm=baton@us-east" in refused.stdout \
        and "Nothing was changed" in refused.stdout, refused.stdout[-2000:]
    assert total_changed(refused) == 0
    elsewhere = playbook("restore.yml", "-e", "in_place=true", "-e", "confirm=baton@us-east",
                         "-e", "region=eu-west")
    assert elsewhere.returncode != 0 and "leave region out" in elsewhere.stdout, \
        elsewhere.stdout[-2000:]
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute("DROP TABLE IF EXISTS baton_in_place_after")
    target = rows_then_drop("baton_in_place_probe", 400)
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute("CREATE TABLE baton_in_place_after (x int)")
        timeline = conn.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), "
                                "1, 8))::bit(32)::int").fetchone()[0]
    check = pgbackrest("us-east-1", "check")  # a WAL switch, archived: the drop is in the repo
    assert check.returncode == 0, check.stdout + check.stderr
    args = ("-e", f"target_time='{target}'", "-e", "in_place=true", "-e", "confirm=baton@us-east")

    plan = playbook("restore.yml", "--check", *args)
    assert plan.returncode == 0 and "estimated" in plan.stdout, plan.stdout[-3000:]
    with pgbouncer("us-east-1", "app") as conn:  # the plan changed nothing
        assert conn.execute("SELECT to_regclass('baton_in_place_probe')").fetchone()[0] is None

    run = playbook("restore.yml", *args)
    assert run.returncode == 0, run.stdout[-4000:]
    with pgbouncer("us-east-1", "app") as conn:
        assert conn.execute("SELECT count(*), max(id) FROM baton_in_place_probe").fetchone() \
            == (400, 400)
        assert conn.execute("SELECT to_regclass('baton_in_place_after')").fetchone()[0] is None
        conn.execute("INSERT INTO baton_in_place_probe VALUES (401)")
    done = report("restore-in-place")
    figures = ("timeline", "copy_seconds", "recovery_seconds", "clients_held_seconds",
               "wall_seconds")
    print(f"restore in place: {({k: done[k] for k in figures})}")
    assert done["region"] == "us-east" and sorted(done["recloned"]) == ["eu-west", "us-west"]
    assert done["timeline"] > timeline, (done["timeline"], timeline)
    assert holder()["region"] == "us-east"
    again = healthy_again()
    assert again.returncode == 0, again.stdout[-3000:]
    def eu_west_rows() -> int | None:
        try:
            with psycopg.connect(host=MINI["eu-west-1"], port=5432, dbname="app",
                                 autocommit=True, **APP) as conn:
                return conn.execute("SELECT count(*) FROM baton_in_place_probe").fetchone()[0]
        except psycopg.Error:
            return None
    wait_for(lambda: eu_west_rows() == 401, 60, "eu-west streaming the restored table")

    rerun = playbook("restore.yml", *args)
    assert rerun.returncode == 0 and total_changed(rerun) == 0, rerun.stdout[-3000:]
    assert "nothing to do" in " ".join(rerun.stdout.split()), rerun.stdout[-2000:]


def test_a_standby_region_cut_off_from_its_source_replays_the_archive(lab):
    """eu-west's standby leader loses its stream (its standby_cluster names an address where
    nothing answers). Rows written in us-east then reach it all the same, through
    restore_command (baton-archive get: eu-west's own repository, then the global site's),
    while its WAL receiver streams nothing; given its source back, it streams again."""
    patronictl = ("podman", "exec", "baton-eu-west-1", "/opt/patroni/bin/patronictl", "-c",
                  "/etc/patroni/patroni.yml")
    shown = sh(*patronictl, "show-config", timeout=60)
    source = yaml.safe_load(shown.stdout)["standby_cluster"]["host"]
    assert source, shown.stdout

    def streaming() -> bool:
        got = scratch_sql("eu-west-1", "SELECT count(*) FROM pg_stat_wal_receiver "
                          "WHERE status = 'streaming'", port=5432)
        return got.stdout.strip() == "1"
    assert streaming()
    cut = sh(*patronictl, "edit-config", "--force", "-s", "standby_cluster.host=10.231.3.250",
             timeout=60)
    assert cut.returncode == 0, cut.stdout + cut.stderr
    try:
        wait_for(lambda: not streaming(), 60, "eu-west's stream ends")
        with pgbouncer("us-east-1", "app") as conn:
            conn.execute("DROP TABLE IF EXISTS baton_archive_probe")
            conn.execute("CREATE TABLE baton_archive_probe (id int PRIMARY KEY)")
            conn.execute("INSERT INTO baton_archive_probe SELECT generate_series(1, 250)")
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        check = pgbackrest("us-east-1", "check")  # a WAL switch, found archived
        assert check.returncode == 0, check.stdout + check.stderr

        def replayed() -> bool:
            got = scratch_sql("eu-west-1", f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'",
                              port=5432)
            return got.stdout.strip() == "t"
        wait_for(replayed, 90, f"eu-west replays past {lsn} from the archive")
        assert not streaming(), "eu-west streamed: the test proves nothing"
        rows = scratch_sql("eu-west-1", "SELECT count(*) FROM baton_archive_probe", port=5432)
        assert rows.stdout.strip() == "250", rows.stdout + rows.stderr
        log = sh("podman", "exec", "baton-eu-west-1", "journalctl", "-u", "patroni", "--since",
                 "-3min", "--no-pager", "-g", "restored log file", timeout=30)
        assert "from archive" in log.stdout, log.stdout + log.stderr
        print(f"eu-west replayed past {lsn}: {log.stdout.strip().splitlines()[-1]}")
    finally:
        back = sh(*patronictl, "edit-config", "--force", "-s", f"standby_cluster.host={source}",
                  timeout=60)
    assert back.returncode == 0, back.stdout + back.stderr
    wait_for(streaming, 90, "eu-west streams from its source again")


def test_a_row_written_in_us_east_is_read_through_app_ro_in_the_other_regions(lab):
    token = f"row-{time.time_ns()}"
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_probe (v text PRIMARY KEY)")
        conn.execute("INSERT INTO baton_probe VALUES (%s)", (token,))
    started = time.monotonic()
    for host in ("us-west-1", "eu-west-1"):
        def seen(host=host):
            with pgbouncer(host, "app_ro") as conn:
                return conn.execute("SELECT count(*) FROM baton_probe WHERE v = %s",
                                    (token,)).fetchone()[0] == 1
        wait_for(seen, 10, f"{token} readable through app_ro in {host}")
    print(f"row visible in us-west and eu-west after {time.monotonic() - started:.2f} s")


def test_a_key_written_in_us_east_is_read_in_every_other_region_within_two_seconds(lab):
    token = f"key-{time.time_ns()}"
    cache("us-east-1").set("baton:probe", token)
    started = time.monotonic()
    for host in ("us-west-1", "eu-west-1"):
        wait_for(lambda host=host: cache(host).get("baton:probe") == token, 2,
                 f"{token} readable in {host}")
    print(f"key visible in us-west and eu-west after {time.monotonic() - started:.2f} s")


def test_pgbouncers_admin_console_answers_only_on_its_own_node(lab):
    """PAUSE, RESUME, RELOAD, KILL: the admin user logs in from the node itself only; the stats
    user (the assessment's SHOW DATABASES) from anywhere."""
    admin = {"user": "baton_pgbouncer", "password": "lab-pgbouncer-not-secret"}  # lab throwaway
    monitor = {"user": "baton_monitor", "password": "lab-monitor-not-secret"}  # lab throwaway
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=MINI["us-east-1"], port=6432, dbname="pgbouncer", autocommit=True,
                        connect_timeout=3, **admin).close()
    with psycopg.connect(host=MINI["us-east-1"], port=6432, dbname="pgbouncer", autocommit=True,
                         connect_timeout=3, cursor_factory=psycopg.ClientCursor,
                         **monitor) as conn:
        assert "app" in [row[0] for row in conn.execute("SHOW DATABASES").fetchall()]
        with pytest.raises(psycopg.Error):
            conn.execute("PAUSE app")
    local = sh("podman", "exec", "-e", f"PGPASSWORD={admin['password']}", "baton-us-east-1",
               "psql", "host=127.0.0.1 port=6432 dbname=pgbouncer user=baton_pgbouncer",
               "-XAtc", "SHOW DATABASES", timeout=30)
    assert local.returncode == 0 and "app|" in local.stdout, local.stderr


def test_the_nodes_hold_and_release_command_reads_first_and_only_root_has_its_password(lab):
    """baton-pgbouncer, what failover.yml's PgBouncer plays run with `raw`: a re-run changes
    nothing, check mode only says what it would send, and its passfile is root's alone."""
    def run(*args: str, user: str = "root") -> subprocess.CompletedProcess:
        return sh("podman", "exec", "--user", user, "baton-us-west-1",
                  "/usr/local/sbin/baton-pgbouncer", *args, timeout=30)
    same = run("--state", "resumed", "--hosts", MINI["us-east-1"])
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout.splitlines()[-1])["changed"] is False, same.stdout
    would = json.loads(run("--state", "paused", "--check").stdout.splitlines()[-1])
    assert would["changed"] and would["commands"] == ["PAUSE app"], would
    assert would["before"]["paused"] is False and would["after"]["paused"] is True, would
    stranger = run("--state", "resumed", user="postgres")
    assert stranger.returncode == 1 and "admin console did not answer" in stranger.stderr, \
        (stranger.stdout, stranger.stderr)
    mode = sh("podman", "exec", "baton-us-west-1", "stat", "-c", "%U %a",
              "/etc/pgbouncer/baton-admin.pgpass", timeout=30)
    assert mode.stdout.split() == ["root", "600"], mode.stdout
    # A transaction left open (on a server that is gone, in a region loss) holds a PAUSE: after
    # --pause-timeout the command drops the database's connections (KILL), and `app` stays
    # held until it is let through.
    idle = psycopg.connect(host=MINI["us-west-1"], port=6432, dbname="app", **APP)
    idle.execute("SELECT 1")
    started = time.monotonic()
    held = run("--state", "paused", "--pause-timeout", "2")
    took = time.monotonic() - started
    try:
        done = json.loads(held.stdout.splitlines()[-1])
        assert held.returncode == 0 and done["killed"] and done["after"]["paused"], held.stdout
        assert 2 <= took < 10, took
        with pytest.raises(psycopg.Error):
            idle.execute("SELECT 1")
    finally:
        idle.close()
        let_go = run("--state", "resumed")
    assert json.loads(let_go.stdout.splitlines()[-1])["commands"] == ["RESUME app"], let_go.stdout
    with pgbouncer("us-west-1", "app") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_nodes_command_of_another_version_stops_a_move_before_anything_is_held(lab):
    """us-west-1's baton-pgbouncer differs from the controller's code (a node left on another
    Baton release): a switchover stops at the hold, names the host and the site.yml run that
    mends it, and leaves every PgBouncer serving `app` and the baton where it was."""
    command = "/usr/local/sbin/baton-pgbouncer"
    edit = sh("podman", "exec", "baton-us-west-1", "sh", "-c",
              f"echo '# another release' >> {command}", timeout=30)
    assert edit.returncode == 0, edit.stderr
    try:
        run = playbook("switchover.yml", "-e", "target=us-west")
    finally:
        sh("podman", "exec", "baton-us-west-1", "sed", "-i", "$ d", command, timeout=30)
    assert run.returncode != 0
    assert "is not the controller's version (another Baton release): run site.yml --tags " \
           "pgbouncer for this host" in " ".join(run.stdout.split()), run.stdout[-3000:]
    assert holder()["region"] == "us-east"
    for host in REGION_OF:
        with pgbouncer(host, "app") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,), host


def test_redis_chains_from_us_east_and_only_its_sentinel_watches(lab):
    assert cache("us-east-1").execute_command("ROLE")[0] == "master"
    for host in ("us-west-1", "eu-west-1"):
        role = cache(host).execute_command("ROLE")
        assert role[:4] == ["slave", MINI["us-east-1"], 6379, "connected"], (host, role)
        # Never promoted by a Sentinel: the baton moves between regions only by failover.yml.
        assert cache(host).config_get("replica-priority") == {"replica-priority": "0"}
    watched = cache("us-east-1", 26379).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                       "baton")
    assert watched == [MINI["us-east-1"], "6379"]
    for host in ("us-west-1", "eu-west-1"):
        assert cache(host, 26379).execute_command("SENTINEL", "MASTERS") in ([], {}), host


def test_redis_and_sentinel_refuse_clients_without_their_password_or_tls(lab):
    """Both speak TLS only (no plain-text port), check nothing of a client but its login, and
    a client that checks their certificate against another CA does not trust them."""
    for host in ("us-east-1", "eu-west-1"):
        for port in (6379, 26379):
            password = SENTINEL_PASSWORD if port == 26379 else REDIS_PASSWORD
            anonymous = redis.Redis(host=MINI[host], port=port, socket_timeout=2, **REDIS_TLS)
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
            # One try each (redis-py retries with back-off by default: 10 s per refusal).
            plain = redis.Redis(host=MINI[host], port=port, password=password,
                                socket_timeout=1, socket_connect_timeout=1,
                                retry=Retry(NoBackoff(), 0))
            with pytest.raises(redis.ConnectionError):
                plain.ping()
            system_ca = redis.Redis(host=MINI[host], port=port, password=password,
                                    socket_timeout=2, ssl=True, ssl_ca_certs=None,
                                    retry=Retry(NoBackoff(), 0))
            with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
                system_ca.ping()
            assert cache(host, port).ping()
    # A client that resolved the failover names checks them in the certificate: every region
    # node's certificate names db and redis of the zone (they move with the baton) and its
    # region's db-ro.
    context = ssl.create_default_context(cafile=REDIS_TLS["ssl_ca_certs"])
    for host, region in (("us-east-1", "us-east"), ("eu-west-1", "eu-west")):
        for name in (f"redis.{ZONE}", f"db.{ZONE}", f"db-ro.{region}.{ZONE}"):
            with socket.create_connection((MINI[host], 6379), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname=name):
                pass


def served_certificate_serial(address: str, port: int, postgres: bool = False) -> int:
    """The serial number of the certificate a TLS endpoint presents (checked against the lab's
    CA); postgres: PostgreSQL's and PgBouncer's SSLRequest first."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=REDIS_TLS["ssl_ca_certs"])
    raw = socket.create_connection((address, port), timeout=3)
    if postgres:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S", (address, port)
    with context.wrap_socket(raw, server_hostname=address) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number


def test_every_tls_endpoint_presents_the_nodes_current_certificate(lab):
    """Redis, Sentinel, Patroni's REST API, PostgreSQL and PgBouncer present the certificate in
    the node's file, not one they read before it was issued again (role pki leaves a marker,
    each service's role makes it read the file again)."""
    from cryptography import x509

    for host in ("us-east-1", "us-west-1", "eu-west-1"):
        pem = sh("podman", "exec", f"baton-{host}", "cat", "/etc/ssl/baton/node.crt").stdout
        current = x509.load_pem_x509_certificate(pem.encode()).serial_number
        served = {port: served_certificate_serial(MINI[host], port) for port in (6379, 26379, 8008)}
        served.update({port: served_certificate_serial(MINI[host], port, postgres=True)
                       for port in (5432, 6432)})
        assert {port for port, serial in served.items() if serial != current} == set(), host
        pending = sh("podman", "exec", f"baton-{host}", "ls", "/var/lib/baton/tls-reload").stdout
        assert pending.split() == [], (host, pending)


def test_the_applications_redis_user_writes_and_finds_the_master_but_cannot_administer(lab):
    """The application's ACL user (on every server: ACLs are not replicated) cannot change the
    fence's setting, make a server a replica or a master, or stop it; the monitoring user reads
    INFO, not the configuration (its passwords)."""
    for host in MINI:
        if host == "global-1":
            continue
        app = redis.Redis(host=MINI[host], port=6379, username="app",
                          password="lab-app-not-secret", socket_timeout=2,  # lab throwaway
                          **REDIS_TLS)
        if host == "us-east-1":
            assert app.set("baton:acl-test", "1")
            assert app.set("_acl-test", "1")
        # Nor hold the fence agent back with Baton's handover marker, nor speak on Sentinel's
        # hello channel (a forged hello could move Sentinel's master).
        for command in (("CONFIG", "SET", "min-replicas-to-write", "0"),
                        ("REPLICAOF", "NO", "ONE"), ("SHUTDOWN", "NOSAVE"),
                        ("SET", "__baton__:handover", "1", "PX", "60000"),
                        ("PUBLISH", "__sentinel__:hello", "forged")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.execute_command(*command)
        # It listens to any channel, by name or by pattern (keyspace notifications too).
        assert app.publish("news", "hello") == 0
        listener = app.pubsub()
        listener.psubscribe("__keyspace@0__:*", "news.*")
        listener.subscribe("__sentinel__:hello")
        kinds = [listener.get_message(timeout=2)["type"] for _ in range(3)]
        assert sorted(kinds) == ["psubscribe", "psubscribe", "subscribe"], kinds
        listener.close()
        monitor = redis.Redis(host=MINI[host], port=6379, username="baton_monitor",
                              password="lab-monitor-not-secret", socket_timeout=2, **REDIS_TLS)
        assert "redis_version" in monitor.info("server")
        for command in (("SET", "baton:acl-test", "2"), ("CONFIG", "GET", "requirepass")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                monitor.execute_command(*command)
        # On Sentinel the same user finds the master, as a client library does, and may do
        # nothing else: no failover, no change of the monitor, no forged hello.
        sentinel = redis.Redis(host=MINI[host], port=26379, username="app",
                               password="lab-app-not-secret", socket_timeout=2, **REDIS_TLS)
        if host == "us-east-1":
            found = redis.sentinel.Sentinel(
                [(MINI[host], 26379)], socket_timeout=2,
                sentinel_kwargs={"username": "app", "password": "lab-app-not-secret",
                                 **REDIS_TLS}).discover_master("baton")
            assert found == (MINI["us-east-1"], 6379)
        for command in (("SENTINEL", "FAILOVER", "baton"), ("SENTINEL", "REMOVE", "baton"),
                        ("SENTINEL", "SET", "baton", "quorum", "5"),
                        ("SENTINEL", "MONITOR", "x", MINI[host], "6379", "1"),
                        ("PUBLISH", "__sentinel__:hello", "forged"), ("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                sentinel.execute_command(*command)
        # The fence agent's user reads the role and sets the fence, and reaches no data.
        from baton_pki import baton_derived_password

        agent = redis.Redis(host=MINI[host], port=6379, username="baton_agent", socket_timeout=2,
                            password=baton_derived_password(REDIS_PASSWORD, "redis", "baton_agent"),
                            decode_responses=True, **REDIS_TLS)
        assert agent.execute_command("ROLE")[0] in ("master", "slave")
        assert agent.execute_command("CONFIG", "GET", "min-replicas-to-write")
        assert agent.exists("__baton__:handover") == 0
        for command in (("GET", "baton:acl-test"), ("REPLICAOF", "NO", "ONE"),
                        ("SHUTDOWN", "NOSAVE"), ("ACL", "LIST"), ("FLUSHALL",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                agent.execute_command(*command)
    assert cache("us-east-1").execute_command("ROLE")[0] == "master"  # nothing was stopped
    watched = cache("us-east-1", 26379).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                         "baton")
    assert watched == [MINI["us-east-1"], "6379"]  # nor moved


SECRETS = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/secrets.yml").read_text())
ZONE = "baton.internal"


def dns_update(name: str, rdtype: str, values: list[str], secret: str | None) -> str:
    """Replace name's records with one RFC 2136 update to the primary; the RCODE of the
    response, read from its header (a signature error comes back as NOTAUTH, unsigned)."""
    keyring = dns.tsigkeyring.from_text({"baton-update": secret}) if secret else None
    update = dns.update.UpdateMessage(ZONE, keyring=keyring, keyalgorithm="hmac-sha256")
    update.replace(name, 10, rdtype, *values)
    with socket.create_connection((MINI["global-1"], 53), timeout=5) as sock:
        dns.query.send_tcp(sock, update.to_wire())
        (length,) = struct.unpack("!H", _recv(sock, 2))
        header = _recv(sock, length)[:4]
    return dns.rcode.to_text(header[3] & 0x0F)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the name server closed the connection")
        data += chunk
    return data


def dns_answer(server: str, name: str, rdtype: str = "A") -> list[str]:
    response = dns.query.udp(dns.message.make_query(f"{name}.{ZONE}", rdtype), MINI[server],
                             timeout=2)
    return sorted(item.to_text() for rrset in response.answer for item in rrset)


def test_every_name_server_answers_db_with_the_primary_region(lab):
    for server in MINI:
        assert dns_answer(server, "db") == [MINI["us-east-1"]], server
        assert dns_answer(server, "db-ro.eu-west") == [MINI["eu-west-1"]], server
        assert dns_answer(server, "redis") == [MINI["us-east-1"]], server


def test_a_signed_update_reaches_every_secondary_and_unsigned_or_wrong_key_are_refused(lab):
    token = f'"probe-{time.time_ns()}"'
    assert dns_update("probe", "TXT", [token], SECRETS["dns_tsig_secret"]) == "NOERROR"
    started = time.monotonic()
    for server in ("us-east-1", "us-west-1", "eu-west-1"):
        wait_for(lambda server=server: dns_answer(server, "probe", "TXT") == [token], 10,
                 f"the update on the secondary of {server}")
    print(f"signed update served by every secondary after {time.monotonic() - started:.2f} s")
    assert dns_update("probe", "TXT", ['"unsigned"'], None) == "REFUSED"
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc="
    assert dns_update("probe", "TXT", ['"wrong-key"'], wrong) == "NOTAUTH"
    assert dns_answer("global-1", "probe", "TXT") == [token]


def baton_dns(check: bool = False, **args) -> dict:
    """Run the baton_dns module once on the controller; its result (failed or not)."""
    params = {"zone": ZONE, "type": "TXT", "server": MINI["global-1"],
              "key_name": "baton-update", "key_secret": SECRETS["dns_tsig_secret"],
              "verify_servers": sorted(MINI.values()), "wait_timeout": 10, **args}
    env = dict(ENV, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    proc = sh(str(BIN / "ansible"), "localhost", "-m", "baton_dns", "-a", json.dumps(params),
              *(["--check"] if check else []), env=env, timeout=120)
    return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_baton_dns_sets_a_record_once_then_reports_ok_and_sends_nothing(lab):
    values = [f"set-{time.time_ns()}"]
    first = baton_dns(name="module-probe", values=values)
    assert first["changed"] and first["update_sent"], first
    assert set(first["servers"]) == set(MINI.values())
    for server in MINI:
        assert dns_answer(server, "module-probe", "TXT") == [f'"{values[0]}"'], server
    print(f"baton_dns: every server served the update after {first['elapsed']} s")
    again = baton_dns(name="module-probe", values=values)
    assert not again["changed"] and not again["update_sent"], again
    checked = baton_dns(check=True, name="module-probe", values=["other"])
    assert checked["changed"] and not checked["update_sent"], checked
    assert dns_answer("global-1", "module-probe", "TXT") == [f'"{values[0]}"']


def test_baton_dns_compare_and_swap_that_no_longer_holds_fails_and_changes_nothing(lab):
    held = f"held-{time.time_ns()}"
    assert baton_dns(name="cas-probe", values=[held])["changed"]
    lost = baton_dns(name="cas-probe", values=["mine"], expected_values=["stale"])
    assert lost.get("failed") and not lost["changed"], lost
    assert f'holds "{held}", not the expected "stale"' in lost["msg"]
    assert dns_answer("global-1", "cas-probe", "TXT") == [f'"{held}"']
    won = baton_dns(name="cas-probe", values=["mine"], expected_values=[held])
    assert won["changed"] and dns_answer("global-1", "cas-probe", "TXT") == ['"mine"'], won
    # Run again (e.g. a failover re-run): already swapped, so ok although `held` is gone.
    assert not baton_dns(name="cas-probe", values=["mine"], expected_values=[held])["changed"]


def test_baton_dns_moves_several_records_in_one_update_all_or_none(lab):
    """A move's db and redis: one update, one serial, both verified on every server; a
    compare-and-swap that fails on one of them changes neither."""
    a, b = f"a-{time.time_ns()}", f"b-{time.time_ns()}"
    first = baton_dns(records=[{"name": "multi-a", "values": [a]},
                               {"name": "multi-b", "values": [b]}])
    assert first["changed"] and first["update_sent"], first
    serials = {server: {answer.get("serial") for answer in (
        first["servers"][f"multi-{x}.{ZONE}."][MINI[server]] for x in "ab")} for server in MINI}
    assert all(len(found) == 1 for found in serials.values()), serials  # one serial for both
    for server in MINI:
        assert dns_answer(server, "multi-a", "TXT") == [f'"{a}"'], server
        assert dns_answer(server, "multi-b", "TXT") == [f'"{b}"'], server
    lost = baton_dns(records=[{"name": "multi-a", "values": ["new-a"], "expected_values": [a]},
                              {"name": "multi-b", "values": ["new-b"],
                               "expected_values": ["stale"]}])
    assert lost.get("failed") and not lost["changed"], lost
    assert dns_answer("global-1", "multi-a", "TXT") == [f'"{a}"']
    won = baton_dns(records=[{"name": "multi-a", "values": ["new-a"], "expected_values": [a]},
                             {"name": "multi-b", "values": ["new-b"], "expected_values": [b]}])
    assert won["changed"] and [c["action"]["action"] for c in won["changes"]] == [
        "replace", "replace"], won
    again = baton_dns(records=[{"name": "multi-a", "values": ["new-a"], "expected_values": [a]},
                               {"name": "multi-b", "values": ["new-b"], "expected_values": [b]}])
    assert not again["changed"] and not again["update_sent"], again


def test_baton_dns_names_a_wrong_secret_or_key(lab):
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc="
    bad_secret = baton_dns(name="module-probe", values=["x"], key_secret=wrong)
    assert bad_secret.get("failed") and "(BADSIG)" in bad_secret["msg"], bad_secret
    bad_name = baton_dns(name="module-probe", values=["x"], key_name="nobody")
    assert bad_name.get("failed") and "(BADKEY)" in bad_name["msg"], bad_name
    outside = baton_dns(name="module-probe", values=["x"], zone="other.internal")
    assert outside.get("failed") and "not authoritative for zone other.internal" in outside["msg"]


# Prometheus's and Alertmanager's web user (lab throwaway password).
WEB_USER, WEB_PASSWORD = "baton", "lab-monitoring-web-not-secret"


def web_request(url: str, data: bytes | None = None, user: str | None = WEB_USER,
                password: str = WEB_PASSWORD, method: str | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET (or a JSON POST with DATA, or METHOD) to an HTTP endpoint
    (monitoring servers, Patroni's REST over HTTPS with the lab's CA), with basic auth as USER
    (None: none)."""
    from harness import open_tls

    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with open_tls(request, 5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def prometheus_query(host: str, query: str) -> list[dict]:
    url = f"http://{MINI[host]}:9090/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = web_request(url)
    assert status == 200, f"{url}: HTTP {status} {body[:200]!r}"
    return json.loads(body)["data"]["result"]


def alertmanager_alerts(alert: str) -> list[dict]:
    """The alerts named ALERT that the global Alertmanager holds (Prometheus sent them)."""
    url = f"http://{MINI['global-1']}:9093/api/v2/alerts?" + urllib.parse.urlencode(
        {"filter": f'alertname="{alert}"'})
    status, body = web_request(url)
    assert status == 200, f"{url}: HTTP {status} {body[:200]!r}"
    return json.loads(body)


def test_prometheus_and_alertmanager_refuse_clients_without_the_password(lab):
    """Nobody silences the split-brain alert, reads the metrics or federates without the web
    password; with it, the same requests work."""
    silences = f"http://{MINI['global-1']}:9093/api/v2/silences"
    now = time.time()
    silence = json.dumps({
        "matchers": [{"name": "alertname", "value": "BatonSplitBrain", "isRegex": False}],
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
        "createdBy": "test", "comment": "must be refused"}).encode()
    assert web_request(silences, silence, user=None)[0] == 401
    assert web_request(silences, silence, password="wrong")[0] == 401
    status, body = web_request(silences)
    assert status == 200
    assert [s for s in json.loads(body) if s["comment"] == "must be refused"] == []
    for url in (f"http://{MINI['global-1']}:9093/api/v2/alerts",
                f"http://{MINI['global-1']}:9090/api/v1/query?query=up",
                f"http://{MINI['us-east-1']}:9090/federate?match%5B%5D=up",
                f"http://{MINI['us-east-1']}:9090/metrics"):
        assert web_request(url, user=None)[0] == 401, url
        assert web_request(url)[0] == 200, url


def test_the_global_prometheus_has_up_series_from_every_region(lab):
    wanted = {(region, job) for region in ("us-east", "us-west", "eu-west")
              for job in ("node", "postgres", "patroni", "etcd", "pgbouncer", "redis", "sentinel",
                          "prometheus", "federate")}
    wanted |= {("global", "node"), ("global", "prometheus"), ("global", "alertmanager")}

    def missing():
        series = prometheus_query("global-1", "up == 1")
        return wanted - {(s["metric"].get("region"), s["metric"].get("job")) for s in series}
    deadline = time.monotonic() + 120
    while (left := missing()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, f"not up in the global Prometheus after 120 s: {sorted(left)}"
    # Every series carries its region; the federated Patroni roles: us-east holds the primary.
    assert [s["metric"] for s in prometheus_query("global-1", "up")
            if "region" not in s["metric"]] == []
    primaries = prometheus_query("global-1", "patroni_primary == 1")
    assert [s["metric"]["region"] for s in primaries] == ["us-east"]
    # The PgBouncer exporter (Debian's) reads every PgBouncer: `app` is served, not paused.
    readable = prometheus_query("global-1", "pgbouncer_up == 1")
    assert sorted(s["metric"]["region"] for s in readable) == ["eu-west", "us-east", "us-west"]
    # (By region: after a move the series of `app` carries the new host, the old one lingers.)
    serving = prometheus_query("global-1",
                               'max by (region) (pgbouncer_databases_paused{name="app"}) == 0')
    assert sorted(s["metric"]["region"] for s in serving) == ["eu-west", "us-east", "us-west"]


def test_the_dr_alerts_fire_in_their_cases_and_the_deployed_configurations_check_clean(lab):
    """What the prometheus role's Molecule scenario checks, on the lab's global Prometheus."""
    rules = (ROOT / "tests/promtool/baton-dr.test.yml").read_text()
    copy = subprocess.run(["podman", "exec", "-i", "baton-global-1", "sh", "-c",
                           "cat > /tmp/baton-dr.test.yml"], input=rules, text=True, env=ENV,
                          capture_output=True, timeout=30)
    assert copy.returncode == 0, copy.stderr
    for check in (["promtool", "test", "rules", "/tmp/baton-dr.test.yml"],
                  ["promtool", "check", "config", "/etc/prometheus/prometheus.yml"],
                  ["promtool", "check", "rules", "/etc/prometheus/rules/baton-dr.rules.yml"],
                  ["amtool", "check-config", "/etc/prometheus/alertmanager.yml"]):
        run = sh("podman", "exec", "baton-global-1", *check, timeout=60)
        assert run.returncode == 0, (check, run.stdout[-2000:], run.stderr[-2000:])


def health_report() -> dict:
    return json.loads((ROOT / "reports/health-latest.json").read_text())


def healthy_again(timeout: float = 180) -> subprocess.CompletedProcess:
    """health.yml until it passes (services settle after a fault), or the last failure."""
    deadline = time.monotonic() + timeout
    while True:
        run = playbook("health.yml")
        if run.returncode == 0 or time.monotonic() > deadline:
            return run
        time.sleep(5)


def test_health_yml_assesses_every_region_healthy_with_us_east_holding_the_baton(lab):
    run = healthy_again(120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert_nothing_changed(run)
    report = health_report()
    assert {r: e["verdict"] for r, e in report["regions"].items()} == {
        "us-east": "healthy", "us-west": "healthy", "eu-west": "healthy"}, report["regions"]
    view = report["global"]
    assert view["baton_holder"] == "us-east" and view["writable_regions"] == ["us-east"]
    assert not view["split_brain"] and report["problems"] == []
    assert sorted(c["region"] for c in view["candidates"]) == ["eu-west", "us-west"]
    assert all(c["data_loss_bytes"] is not None for c in view["candidates"])
    assert {s: a["regions"] for s, a in report["dns"]["names"]["db"].items()} == {
        address: ["us-east"] for address in MINI.values()}
    facts = report["regions"]["us-west"]["facts"]
    assert facts["patroni"]["cluster_role"] == "standby" and facts["postgres"]["in_recovery"]
    assert {p["host"] for p in facts["pgbouncer"].values()} == {MINI["us-east-1"]}
    print(f"baton_assess on the healthy mini lab: {report['elapsed']} s")
    # Every database node's fence agent runs and has not fenced its node.
    for host in ("us-east-1", "us-west-1", "eu-west-1"):
        agent = sh("podman", "exec", f"baton-{host}", "python3",
                   "/usr/local/lib/baton/baton_agent.py", "status", "--config",
                   "/etc/baton/agent.json", timeout=30)
        assert agent.returncode == 0 and json.loads(agent.stdout)["fenced"] is False, (
            host, agent.stdout, agent.stderr)
    # The verdicts reach the global Prometheus through node_exporter's textfile collector.
    wait_for(lambda: prometheus_query("global-1", "baton_region_status") != [], 60,
             "baton_region_status in the global Prometheus")


# --- moving the baton: failover.yml, switchover.yml, failback.yml (issue 7) ------------------

REGION_OF = {"us-east-1": "us-east", "us-west-1": "us-west", "eu-west-1": "eu-west"}
WITNESS = [f"{MINI[h]}:2391" for h in ("us-east-1", "us-west-1", "eu-west-1")]


def witness(user: str = "baton-controller", password: str | None = None):
    """The witness as the controller's runs reach it (or as `user`)."""
    from baton_witness import Witness
    from harness import etcd_client

    return Witness(WITNESS, 3, client=etcd_client(user, password=password))


def holder() -> dict:
    return json.loads(witness().get("/baton/holder").value)


def writable_regions() -> list[str]:
    found = []
    for host, region in REGION_OF.items():
        try:
            with psycopg.connect(host=MINI[host], port=5432, dbname="postgres",
                                 user="baton_monitor", connect_timeout=2,
                                 password=SECRETS["baton_monitoring_password"]) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    found.append(region)
        except psycopg.Error:
            pass
    return found


def report(kind: str) -> dict:
    return json.loads((ROOT / f"reports/{kind}-latest.json").read_text())


def total_changed(run: subprocess.CompletedProcess) -> int:
    return sum(n for n, _u, _f in recap(run.stdout).values())


def test_failover_check_evaluates_the_gates_prints_the_plan_and_changes_nothing(lab):
    before = holder()
    run = playbook("failover.yml", "-e", "target=us-west", "--check")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "PLAN (failover to us-west)" in run.stdout
    assert "demote us-east to a standby cluster of us-west" in run.stdout
    assert total_changed(run) == 0, changed_tasks(run.stdout)
    assert holder() == before and writable_regions() == ["us-east"]
    assert witness().get("/baton/lock") is None


def test_failover_refuses_an_unknown_target_naming_the_regions(lab):
    run = playbook("failover.yml", "-e", "target=us-north")
    assert run.returncode != 0
    assert ("unknown target region us-north: choose one of us-east, us-west, eu-west"
            in " ".join(run.stdout.split()))


def test_failover_refuses_a_lagging_target_and_shows_the_estimate(lab):
    # eu-west stops receiving WAL (its connections to us-east's endpoint are reset) while
    # us-east takes ~4 MB of writes: a failover to it would lose them.
    rule = ["FORWARD", "-s", "10.231.3.0/24", "-d", "10.231.1.0/24", "-p", "tcp", "--dport",
            "5000", "-j", "REJECT", "--reject-with", "tcp-reset"]
    assert sh("iptables", "-I", *rule).returncode == 0
    try:
        with pgbouncer("us-east-1", "app") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS baton_fill (v text)")
            conn.execute("INSERT INTO baton_fill SELECT repeat('x', 1000) "
                         "FROM generate_series(1, 4000)")
        run = playbook("failover.yml", "-e", "target=eu-west", "-e", "max_data_loss=1048576")
    finally:
        sh("iptables", "-D", *rule)
    text = " ".join(run.stdout.split())
    assert run.returncode != 0
    found = re.search(r"target eu-west lags (\d+) bytes of WAL behind the live primary position, "
                      r"above max_data_loss \(1048576 bytes\)", text)
    assert found, text[-3000:]
    assert int(found[1]) > 4_000_000
    assert "-e force=true" in text
    assert holder()["region"] == "us-east" and writable_regions() == ["us-east"]
    wait_for(lambda: cluster_roles("eu-west-1")["eu-west-1"] == ("standby_leader", "streaming"),
             90, "eu-west streaming again")


def test_health_shows_every_host_by_site(lab):
    health = healthy_again()
    assert health.returncode == 0, health.stdout[-3000:]
    for host, address in MINI.items():
        assert re.search(rf"- \S+\s+{host}\s+{re.escape(address)}\s+running", health.stdout)


def test_partition_cuts_the_region_off_and_heal_restores_it(lab):
    # eu-west, a standby region: a partition of the region holding the baton fences it (that
    # test is above), which would leave no writable region for the tests below.
    listener = sh("podman", "exec", "-d", "baton-eu-west-1", "python3", "-m", "http.server",
                  str(LISTEN_PORT))
    assert listener.returncode == 0, listener.stderr
    deadline = time.monotonic() + 10
    while not controller_reaches("eu-west-1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pings("eu-west-1", "us-west-1") and controller_reaches("eu-west-1")

    cut = labctl("partition", "eu-west")
    assert cut.returncode == 0, cut.stderr
    try:
        assert not pings("eu-west-1", "us-west-1")
        assert not pings("eu-west-1", "global-1")
        assert not pings("us-east-1", "eu-west-1")
        assert not controller_reaches("eu-west-1")
        assert pings("us-west-1", "us-east-1"), "the other regions must still reach each other"
        status = json.loads(labctl("status", "--json").stdout)
        assert [h["name"] for h in status["hosts"] if h["partitioned"]] == ["eu-west-1"]
        health = playbook("health.yml")
        assert health.returncode != 0
        report = health_report()
        assert report["regions"]["eu-west"]["verdict"] == "unhealthy"
        assert "eu-west is unhealthy" in " ".join(health.stdout.split())
        print(f"baton_assess with eu-west partitioned: {report['elapsed']} s")
        # Every probe bounded by health_timeout (2 s), all at once: a cut-off region costs one
        # timeout (measured 2.2 s), and probes run one after another would cost two or more.
        assert report["elapsed"] < 2 * 2, "the cut-off region's probes did not run at once"
    finally:
        healed = labctl("heal", "eu-west")
    assert healed.returncode == 0, healed.stderr
    assert pings("eu-west-1", "us-west-1")
    assert pings("us-east-1", "eu-west-1")
    assert controller_reaches("eu-west-1")
    wait_witness_links()


def test_stopped_region_is_unreachable_and_health_says_so(lab):
    stop = labctl("stop-region", "us-west")
    assert stop.returncode == 0, stop.stderr
    try:
        assert not pings("us-east-1", "us-west-1")
        health = playbook("health.yml")
        assert health.returncode != 0
        assert "us-west-1 not healthy (unreachable)" in " ".join(health.stdout.split())
    finally:
        start = labctl("start-region", "us-west")
    assert start.returncode == 0, start.stderr
    assert pings("us-east-1", "us-west-1")
    again = healthy_again()
    assert again.returncode == 0, again.stdout[-3000:]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_region_is_one_sentence_and_exit_2(lab):
    for action in ("partition", "stop-region", "start-region", "heal"):
        proc = labctl(action, "mars")
        assert proc.returncode == 2
        assert one_error_line(proc) == (
            "lab: error: unknown region 'mars': the lab has us-east, us-west, eu-west")


def test_unknown_lab_size_is_one_sentence_and_nonzero_through_make(lab):
    proc = sh("make", "--no-print-directory", "lab-up", "LAB=huge")
    assert proc.returncode != 0
    assert ("lab: error: unknown lab size 'huge': use LAB=bench or LAB=full or LAB=ha or "
            "LAB=mini") in proc.stderr


LAB_REGIONS = ["us-east", "us-west", "eu-west"]


@pytest.mark.parametrize(("extra", "sentence"), [
    ({"baton_region_names": [*LAB_REGIONS, "ap-south"]},
     "region ap-south (baton_region_names) has no database host: add its hosts to its group "
     "under 'regions', or remove it from baton_region_names"),
    ({"patroni_name": "db"},
     "hosts us-east-1 and us-west-1 both use Patroni member name db: member names must be "
     "unique across all regions"),
    ({"baton_region_names": [*LAB_REGIONS, "ap-south"], "baton_initial_primary_region": "ap-south"},
     "baton_initial_primary_region ap-south has no database host, so the standby regions "
     "would have no source: give it hosts or choose one of us-east, us-west, eu-west"),
    ({"redis_sentinel_quorum": 2},
     "region us-east has 1 Sentinel(s) (us-east-1) but redis_sentinel_quorum is 2: set it from 1 "
     "to 1 (a majority of them, 1, is the usual choice)"),
    ({"redis_enabled": False},
     "region eu-west has no Redis host: set redis_enabled true on at least one of its hosts"),
    ({"redis_password": "not-the-servers-password"},
     "Redis at 10.231.1.11:6379, 10.231.2.11:6379, 10.231.3.11:6379 refused the password: "
     "redis_password in the inventory does not match the running servers"),
], ids=["region-without-hosts", "duplicate-member-names", "standby-source-missing",
        "sentinel-quorum-too-large", "region-without-redis", "wrong-redis-password"])
def test_site_yml_refuses_a_bad_inventory_before_anything_changes(lab, extra, sentence):
    proc = playbook("site.yml", "-e", json.dumps(extra))
    assert proc.returncode != 0
    assert sentence in proc.stdout, proc.stdout
    assert "Base OS on every node" not in proc.stdout  # stopped before the first change


def test_missing_podman_that_cannot_be_installed(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text(
        "#!/bin/sh\n[ \"$1\" = update ] && exit 0\n"
        "echo 'E: Unable to locate package podman' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    env = dict(ENV, PATH=str(fake))
    proc = labctl("prereqs", env=env)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("lab: error: apt-cacher-ng, debootstrap, iptables, openssh-client, "
                           "podman, runc missing and 'install' failed (exit 100: E: Unable to "
                           "locate package podman)")
    assert line.endswith("by hand, then re-run")


