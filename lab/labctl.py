#!/usr/bin/env python3
"""Baton's local lab: podman containers standing in for VMs in three regions and a global site.

The lab inventory (inventories/lab/lab.baton.yml) is the only list of hosts: this tool reads it
through `ansible-inventory` and creates one podman network per site and one systemd container
per host at the address the inventory gives. Everything it creates carries the label
`baton.lab=1`, so `down` removes exactly what `up` made.

    labctl.py up [--size mini|full] [--image base|packages]
    labctl.py down                       labctl.py status [--json]
    labctl.py stop-region R [--graceful] labctl.py start-region R      (R: a region or global)
    labctl.py partition R                labctl.py heal [R]
    labctl.py image [--force]            labctl.py prereqs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = ROOT / "lab"
IMAGE_DIR = LAB_DIR / "image"
# The roles' Debian packages, installed on top of the base image for `up --image packages`.
PACKAGES_DIR = LAB_DIR / "image-packages"
INVENTORY = ROOT / "inventories" / "lab"
INVENTORY_FILE = INVENTORY / "lab.baton.yml"
STATE_DIR = ROOT / ".lab"
SIZE_FILE = STATE_DIR / "size"
IMAGE_KIND_FILE = STATE_DIR / "image"
CONTAINERS_CONF = LAB_DIR / "containers.conf"
CACHE_DIR = Path(os.environ.get("BATON_LAB_CACHE", "/var/cache/baton-lab"))
IMAGE_REPO = "localhost/baton-debian13"
PACKAGES_REPO = "localhost/baton-debian13-packages"
IMAGE_KINDS = ("base", "packages")
SUITE = "trixie"
MIRROR = os.environ.get("BATON_LAB_MIRROR", "http://deb.debian.org/debian")
APT_CACHE_PORT = 3149  # not 3142: a host's own apt-cacher-ng service may hold that
# pip's cache, shared by every lab and Molecule container (root's pip cache inside).
PIP_CACHE = CACHE_DIR / "pip"
PIP_CACHE_MOUNT = f"{PIP_CACHE}:/root/.cache/pip"
# Stock Debian units (haproxy, redis, bind9...) set up mount namespaces (ProtectSystem=...),
# which systemd inside a container can do only with CAP_SYS_ADMIN.
CONTAINER_CAPS = ("SYS_ADMIN",)
LABEL = "baton.lab"
HOST_TOOLS = {  # command -> Debian package
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh": "openssh-client",  # the SSH lab (LAB_CONNECTION=ssh), and ssh-keygen for its key
}
# The SSH lab: Ansible logs in as this unprivileged user with the lab's own key and uses sudo,
# checking host keys against the known_hosts file `up` writes (inventories/lab-ssh).
SSH_DIR = STATE_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
SSH_KNOWN_HOSTS = SSH_DIR / "known_hosts"
SSH_ADMIN = "baton-admin"
CHAIN_FWD = "BATON-LAB-FWD"
CHAIN_OUT = "BATON-LAB-OUT"
CHAIN_NAT = "BATON-LAB-NAT"
# Partition rules live in the mangle table, which podman's netavark never touches: its own
# filter rules are inserted first whenever a network comes up, and would accept the traffic.
HOOKS = ((("mangle", "FORWARD"), CHAIN_FWD), (("mangle", "OUTPUT"), CHAIN_OUT),
         (("nat", "POSTROUTING"), CHAIN_NAT))


class LabError(Exception):
    """One clear sentence for the operator; exit code 2."""


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = True, input_: bytes | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    proc = subprocess.run(cmd, capture_output=capture, input=input_, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = err[-1] if err else f"exit {proc.returncode}"
        raise LabError(f"'{' '.join(cmd[:4])}' failed: {detail}")
    return proc


def out(cmd: list[str], **kwargs: Any) -> str:
    return run(cmd, **kwargs).stdout.decode().strip()


# --------------------------------------------------------------------------- topology

def known_sizes() -> list[str]:
    import yaml  # from the project's venv

    with open(INVENTORY_FILE, encoding="utf-8") as handle:
        return sorted(yaml.safe_load(handle)["sizes"])


def check_size(size: str) -> str:
    sizes = known_sizes()
    if size not in sizes:
        raise LabError(f"unknown lab size '{size}': use LAB={' or LAB='.join(sizes)}")
    return size


def current_size() -> str | None:
    return SIZE_FILE.read_text().strip() if SIZE_FILE.exists() else None


def _unwrap(obj: dict[str, Any]) -> Any:
    """ansible-inventory 2.19 writes inventory-plugin strings as {"__ansible_unsafe": s}."""
    return obj["__ansible_unsafe"] if set(obj) == {"__ansible_unsafe"} else obj


def load_topology(size: str) -> dict[str, Any]:
    """Sites and hosts of the lab at SIZE, as the inventory defines them."""
    check_size(size)
    exe = Path(sys.executable).parent / "ansible-inventory"
    cmd = [str(exe if exe.exists() else "ansible-inventory"), "-i", str(INVENTORY), "--list"]
    env = dict(os.environ, BATON_LAB_SIZE=size, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise LabError(f"the lab inventory {INVENTORY} does not parse: "
                       f"{proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    data = json.loads(proc.stdout, object_hook=_unwrap)
    hostvars = data["_meta"]["hostvars"]
    region_groups = data.get("regions", {}).get("children", [])
    region_hosts = [h for g in region_groups for h in data.get(g, {}).get("hosts", [])]
    hosts = []
    for name, hv in hostvars.items():
        if "baton_lab_container" not in hv:
            continue
        hosts.append({
            "name": name, "site": hv["baton_site"], "region": name in region_hosts,
            "container": hv["baton_lab_container"], "address": hv["baton_address"],
            "network": hv["baton_lab_network"], "subnet": hv["baton_lab_subnet"],
            "gateway": hv["baton_lab_gateway"],
        })
    order = region_hosts + sorted(set(hostvars) - set(region_hosts))
    hosts.sort(key=lambda h: order.index(h["name"]))
    sites: dict[str, dict[str, Any]] = {}
    for h in hosts:
        sites.setdefault(h["site"], {"name": h["site"], "region": h["region"],
                                     "network": h["network"], "subnet": h["subnet"],
                                     "gateway": h["gateway"], "hosts": []})["hosts"].append(h)
    return {"size": size, "hosts": hosts, "sites": sites}


def region_of(topo: dict[str, Any], name: str, any_site: bool = False) -> dict[str, Any]:
    """The region called name (any site, the global one too, with any_site)."""
    site = topo["sites"].get(name)
    if site and any_site:
        return site
    if not site or not site["region"]:
        regions = ", ".join(s for s, v in topo["sites"].items() if v["region"])
        raise LabError(f"unknown region '{name}': the lab has {regions}")
    return site


# --------------------------------------------------------------------------- prerequisites

def ensure_prereqs() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab runs rootful podman and host firewall rules: run it as root")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if missing:
        apt = shutil.which("apt-get")
        if not apt:
            raise LabError(f"{', '.join(missing)} missing and there is no apt-get to install "
                           f"them: install {' '.join(missing)} by hand, then re-run")
        say(f"installing host packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *missing]):
            proc = subprocess.run(cmd, capture_output=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
                raise LabError(f"{', '.join(missing)} missing and '{' '.join(cmd[1:2])}' "
                               f"failed (exit {proc.returncode}: {' '.join(tail)}): install "
                               f"{' '.join(missing)} by hand, then re-run")
        still = [t for t in HOST_TOOLS if not shutil.which(t)]
        if still:
            raise LabError(f"{', '.join(still)} still missing after apt-get install: "
                           "install them by hand, then re-run")
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    ensure_apt_cache()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_apt_cache() -> None:
    """apt-cacher-ng on the host, shared by every lab and Molecule container (and debootstrap)."""
    if _port_open("127.0.0.1", APT_CACHE_PORT):
        return
    cache = CACHE_DIR / "apt-cacher-ng"
    logs = CACHE_DIR / "log"
    for d in (cache, logs):
        d.mkdir(parents=True, exist_ok=True)
    # Our own configuration directory, not /etc/apt-cacher-ng (see lab/apt-cacher-ng/acng.conf).
    run([shutil.which("apt-cacher-ng") or "/usr/sbin/apt-cacher-ng", "-c",
         str(ROOT / "lab/apt-cacher-ng"),
         "ForeGround=0", f"CacheDir={cache}", f"LogDir={logs}", f"Port={APT_CACHE_PORT}",
         f"PidFile={CACHE_DIR}/apt-cacher-ng.pid", f"SocketPath={CACHE_DIR}/apt-cacher-ng.sock"])
    for _ in range(50):
        if _port_open("127.0.0.1", APT_CACHE_PORT):
            return
        time.sleep(0.1)
    raise LabError(f"apt-cacher-ng did not start on port {APT_CACHE_PORT}: see {logs}")


# --------------------------------------------------------------------------- image

def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def image_tag() -> str:
    """Content hash of everything that goes into the image: change any of it, get a new one."""
    digest = hashlib.sha256(f"{SUITE} {MIRROR}\n".encode())
    for path in sorted(IMAGE_DIR.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def image_ref() -> str:
    return f"{IMAGE_REPO}:{image_tag()}"


def image_exists(ref: str) -> bool:
    return run(["podman", "image", "exists", ref], check=False).returncode == 0


def build_image(force: bool = False) -> str:
    ref = image_ref()
    if image_exists(ref) and not force:
        run(["podman", "tag", ref, f"{IMAGE_REPO}:current"])
        return ref
    ensure_apt_cache()
    packages = _lines(IMAGE_DIR / "packages.txt")
    masks = _lines(IMAGE_DIR / "mask-units.txt")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="baton-image-", dir=CACHE_DIR))
    rootfs = work / "rootfs"
    started = time.monotonic()
    say(f"building {ref} with debootstrap ({SUITE}, {len(packages)} packages)")
    try:
        mirror = MIRROR.replace("http://", f"http://127.0.0.1:{APT_CACHE_PORT}/", 1)
        run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE,
             str(rootfs), mirror])
        sources = f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n" \
                  f"deb {MIRROR.rsplit('/', 1)[0]}/debian-security {SUITE}-security main\n"
        (rootfs / "etc/apt/sources.list").write_text(sources)
        shutil.copy(IMAGE_DIR / "90baton-lab", rootfs / "etc/apt/apt.conf.d/90baton-lab")
        shutil.copy(IMAGE_DIR / "dpkg-90baton-lab", rootfs / "etc/dpkg/dpkg.cfg.d/90baton-lab")
        proxy = rootfs / "usr/local/sbin/baton-apt-proxy"
        shutil.copy(IMAGE_DIR / "baton-apt-proxy", proxy)
        proxy.chmod(0o755)
        for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        ssh_dropins = rootfs / "etc/systemd/system/ssh.service.d"
        ssh_dropins.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGE_DIR / "ssh-hostkeys.conf", ssh_dropins / "10-baton-lab-hostkeys.conf")
        shutil.copy(IMAGE_DIR / "sshd-baton-lab.conf",
                    rootfs / "etc/ssh/sshd_config.d/10-baton-lab.conf")
        dropins = rootfs / "etc/systemd/system/service.d"
        dropins.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGE_DIR / "10-baton-lab.conf", dropins / "10-baton-lab.conf")
        for unit in masks:
            link = rootfs / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        for name in ("etc/hostname", "etc/machine-id"):
            (rootfs / name).write_text("")
        # Empty lists that look old, so that the first `apt update_cache` always runs
        # (a fresh mtime makes cache_valid_time skip it and installs fail).
        lists = rootfs / "var/lib/apt/lists"
        for item in lists.glob("*"):
            if item.is_file():
                item.unlink()
        os.utime(lists, (0, 0))
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "--change", 'CMD ["/sbin/init"]',
                              "--change", "STOPSIGNAL SIGRTMIN+3", "--change",
                              f"LABEL {LABEL}.image={image_tag()}", "-", ref],
                             stdin=tar.stdout, capture_output=True,
                             env=dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF)))
        tar.stdout.close()  # type: ignore[union-attr]
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise LabError(f"podman import of {ref} failed: {imp.stderr.decode().strip()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run(["podman", "tag", ref, f"{IMAGE_REPO}:current"])
    say(f"built {ref} in {time.monotonic() - started:.0f} s")
    prune_images(keep=ref)
    return ref


def prune_images(keep: str, repo: str = IMAGE_REPO) -> None:
    """Remove the lab's older images of repo (other content hashes) that no container uses."""
    listed = out(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                 check=False).split()
    for old in listed:
        if old not in (keep, f"{repo}:current"):
            run(["podman", "rmi", old], check=False)  # refused while a container uses it


# Run in a container of the base image (no systemd running, so no package starts a service):
# install the roles' packages, then leave every service they brought disabled and no
# PostgreSQL cluster, as a node is before site.yml configures it.
PACKAGES_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
install -d /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/zz-baton-image.conf
find /etc/systemd/system -type l | sort > /tmp/links.before
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
find /etc/systemd/system -type l | sort > /tmp/links.after
# What `systemctl enable` made for them: wants links and aliases (redis.service, bind9.service).
comm -13 /tmp/links.before /tmp/links.after | xargs -r rm -f --
rm -f /etc/postgresql-common/createcluster.d/zz-baton-image.conf /tmp/links.before \
      /tmp/links.after
apt-get clean
find /var/lib/apt/lists -maxdepth 1 -type f -delete
touch -d @0 /var/lib/apt/lists
"""


def packages_ref() -> str:
    digest = hashlib.sha256(f"{image_tag()}\n{PACKAGES_SCRIPT}".encode())
    for path in sorted(PACKAGES_DIR.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{PACKAGES_REPO}:{digest.hexdigest()[:12]}"


def build_packages_image(base: str) -> str:
    """The base image with the roles' Debian packages installed (services disabled): a lab of
    many nodes deploys minutes faster. The mini lab's tests use the base image, where
    site.yml installs every package as on a fresh VM."""
    ref = packages_ref()
    if image_exists(ref):
        return ref
    packages = _lines(PACKAGES_DIR / "packages.txt")
    started = time.monotonic()
    say(f"building {ref}: the base image and {len(packages)} packages of the roles")
    work = f"baton-image-build-{os.getpid()}"
    try:
        proc = run(["podman", "run", "--name", work, base, "bash", "-c", PACKAGES_SCRIPT,
                    "bash", *packages], check=False)
        if proc.returncode != 0:
            raise LabError(f"installing the roles' packages into the image failed: "
                           f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        run(["podman", "commit", "--quiet", "--change", 'CMD ["/sbin/init"]',
             "--change", "STOPSIGNAL SIGRTMIN+3", work, ref])
    finally:
        run(["podman", "rm", "-f", work], check=False)
    say(f"built {ref} in {time.monotonic() - started:.0f} s")
    prune_images(keep=ref, repo=PACKAGES_REPO)
    return ref


# --------------------------------------------------------------------------- networks, firewall

def lab_networks() -> list[str]:
    return out(["podman", "network", "ls", "--filter", f"label={LABEL}=1", "--format",
                "{{.Name}}"]).split()


def ensure_networks(topo: dict[str, Any]) -> None:
    existing = set(out(["podman", "network", "ls", "--format", "{{.Name}}"]).split())
    for site in topo["sites"].values():
        name = site["network"]
        if name in existing:
            info = json.loads(out(["podman", "network", "inspect", name]))[0]
            subnets = [s.get("subnet") for s in info.get("subnets", [])]
            if info.get("labels", {}).get(LABEL) != "1":
                raise LabError(f"podman network {name} exists but was not made by the lab: "
                               f"remove it (podman network rm {name}) and re-run")
            if site["subnet"] not in subnets:
                raise LabError(f"podman network {name} is left from an earlier lab with subnet "
                               f"{', '.join(subnets)} (the inventory wants {site['subnet']}): "
                               "run 'make lab-down', then 'make lab-up'")
            continue
        run(["podman", "network", "create", "--label", f"{LABEL}=1", "--subnet", site["subnet"],
             "--gateway", site["gateway"], name])


def _ipt(table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["iptables", "-w", "5", "-t", table, *args], check=check)


def ensure_firewall(topo: dict[str, Any]) -> None:
    """Our own chains, hooked first: no NAT between lab subnets (each host sees the real
    source address, as between VMs), and a place for the partition rules. Called again after
    containers start, since netavark adds its rules when a network comes up."""
    for (table, hook), chain in HOOKS:
        if _ipt(table, "-n", "-L", chain, check=False).returncode != 0:
            _ipt(table, "-N", chain)
        first = _ipt(table, "-S", hook).stdout.decode().splitlines()[1:2]
        if first != [f"-A {hook} -j {chain}"]:
            while _ipt(table, "-C", hook, "-j", chain, check=False).returncode == 0:
                _ipt(table, "-D", hook, "-j", chain)
            _ipt(table, "-I", hook, "1", "-j", chain)
    subnets = [s["subnet"] for s in topo["sites"].values()]
    _ipt("nat", "-F", CHAIN_NAT)
    for src in subnets:
        for dst in subnets:
            if src != dst:
                _ipt("nat", "-A", CHAIN_NAT, "-s", src, "-d", dst, "-j", "ACCEPT")


def remove_firewall() -> None:
    for (table, hook), chain in HOOKS:
        while _ipt(table, "-C", hook, "-j", chain, check=False).returncode == 0:
            _ipt(table, "-D", hook, "-j", chain)
        if _ipt(table, "-n", "-L", chain, check=False).returncode == 0:
            _ipt(table, "-F", chain)
            _ipt(table, "-X", chain)


# A stopped region's bridge goes away with its last container, and its subnet's route with
# it: traffic to its addresses would then follow the host's default route, off the machine.
# An unreachable route per site subnet, below the bridge's own (metric 0), answers at once
# instead ("No route to host"), as a dead region's addresses do.
ROUTE_METRIC = "4231"


def ensure_routes(topo: dict[str, Any]) -> None:
    for site in topo["sites"].values():
        run(["ip", "route", "replace", "unreachable", site["subnet"], "metric", ROUTE_METRIC])


def remove_routes() -> None:
    for line in out(["ip", "route", "show", "type", "unreachable"], check=False).splitlines():
        fields = line.split()  # unreachable 10.231.1.0/24 metric 4231
        if len(fields) >= 2 and fields[-2:] == ["metric", ROUTE_METRIC]:
            subnet = fields[1] if fields[0] == "unreachable" else fields[0]
            run(["ip", "route", "del", "unreachable", subnet, "metric", ROUTE_METRIC],
                check=False)


def _partition_comment(region: str) -> str:
    return f"baton-partition:{region}"


def partitioned_regions() -> list[str]:
    proc = _ipt("mangle", "-S", CHAIN_FWD, check=False)
    found = set()
    for line in proc.stdout.decode().splitlines():
        if "baton-partition:" in line:
            found.add(line.split("baton-partition:", 1)[1].split()[0].strip('"'))
    return sorted(found)


def partition(topo: dict[str, Any], name: str) -> None:
    site = region_of(topo, name)
    ensure_firewall(topo)
    if name in partitioned_regions():
        say(f"{name} is already partitioned")
        return
    tag = ["-m", "comment", "--comment", _partition_comment(name)]
    for other in topo["sites"].values():
        if other["name"] == name:
            continue
        _ipt("mangle", "-A", CHAIN_FWD, "-s", site["subnet"], "-d", other["subnet"], *tag,
             "-j", "DROP")
        _ipt("mangle", "-A", CHAIN_FWD, "-s", other["subnet"], "-d", site["subnet"], *tag,
             "-j", "DROP")
    # The controller (this host) cannot open connections into the region either; replies to
    # connections the region opens to its gateway (DNS, apt cache) still pass.
    _ipt("mangle", "-A", CHAIN_OUT, "-d", site["subnet"], "-m", "conntrack", "--ctstate", "NEW",
         *tag, "-j", "DROP")
    say(f"partitioned {name} ({site['subnet']}) from every other site and from the controller")


def heal(topo: dict[str, Any], name: str | None) -> None:
    if name is not None:
        region_of(topo, name)
    targets = [name] if name else partitioned_regions()
    for chain in (CHAIN_FWD, CHAIN_OUT):
        proc = _ipt("mangle", "-S", chain, check=False)
        for line in proc.stdout.decode().splitlines():
            if not line.startswith("-A "):
                continue
            if any(_partition_comment(t) in line for t in targets):
                _ipt("mangle", "-D", *shlex.split(line)[1:])
    say(f"healed {', '.join(targets) if targets else 'nothing (no partition in place)'}")


# --------------------------------------------------------------------------- containers

def lab_containers() -> list[dict[str, Any]]:
    raw = out(["podman", "ps", "-a", "--filter", f"label={LABEL}=1", "--format", "json"])
    return json.loads(raw or "[]")


def network_sysctls() -> dict[str, str]:
    """The common role's network kernel settings (net.*), which a container cannot set itself
    (its /proc/sys is read-only): podman sets them in the container's network namespace, so
    the lab's nodes behave as VMs that ran the role do."""
    import yaml  # from the project's venv

    defaults = ROOT / "roles" / "common" / "defaults" / "main.yml"
    settings = yaml.safe_load(defaults.read_text(encoding="utf-8")).get("common_sysctl") or {}
    return {k: str(v) for k, v in sorted(settings.items()) if k.startswith("net.")}


def _container_config(host: dict[str, Any], topo: dict[str, Any], ref: str) -> str:
    peers = sorted(f"{h['name']}:{h['address']}" for h in topo["hosts"])
    blob = json.dumps([ref, host["network"], host["address"], peers, PIP_CACHE_MOUNT,
                       CONTAINER_CAPS, network_sysctls()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def inspect_container(name: str) -> dict[str, Any] | None:
    proc = run(["podman", "container", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def ensure_containers(topo: dict[str, Any], ref: str) -> list[str]:
    """Create missing containers, start stopped ones; refuse anything stale. Returns names."""
    wanted = {h["container"]: h for h in topo["hosts"]}
    for c in lab_containers():
        name = c["Names"][0]
        if name not in wanted:
            raise LabError(f"container {name} is left from an earlier lab and is not in the "
                           f"{topo['size']} lab: run 'make lab-down' first, then 'make lab-up "
                           f"LAB={topo['size']}'")
    names = []
    for name, host in wanted.items():
        config = _container_config(host, topo, ref)
        info = inspect_container(name)
        if info is not None:
            labels = info["Config"].get("Labels") or {}
            if labels.get(LABEL) != "1":
                raise LabError(f"container {name} exists but was not made by the lab: remove "
                               f"it (podman rm -f {name}) and re-run")
            if labels.get(f"{LABEL}.config") != config:
                raise LabError(f"container {name} is stale, left from an earlier lab run with "
                               "another image or address: run 'make lab-down', then "
                               "'make lab-up'")
            if info["State"]["Status"] != "running":
                say(f"starting {name}")
                run(["podman", "start", name])
            names.append(name)
            continue
        cmd = ["podman", "run", "-d", "--name", name, "--hostname", host["name"],
               "--network", f"{host['network']}:ip={host['address']}",
               "--systemd", "always", "--volume", PIP_CACHE_MOUNT,
               *[f"--cap-add={cap}" for cap in CONTAINER_CAPS],
               *[f"--sysctl={k}={v}" for k, v in network_sysctls().items()],
               "--label", f"{LABEL}=1",
               "--label", f"{LABEL}.config={config}", "--label", f"{LABEL}.site={host['site']}",
               "--label", f"{LABEL}.host={host['name']}"]
        for peer in topo["hosts"]:
            if peer["name"] != host["name"]:
                cmd += ["--add-host", f"{peer['name']}:{peer['address']}"]
        run([*cmd, ref, "/sbin/init"])
        say(f"created {name} ({host['address']} on {host['network']})")
        names.append(name)
    return names


def wait_systemd(names: list[str], timeout: float = 90) -> dict[str, str]:
    """Wait until systemd in each container has finished booting; return each state."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    pending = list(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            proc = run(["podman", "exec", name, "systemctl", "is-system-running"], check=False)
            state = proc.stdout.decode().strip() or "unknown"
            states[name] = state
            if state in ("running", "degraded"):
                pending.remove(name)
        if pending:
            time.sleep(1)
    for name in pending:
        raise LabError(f"{name}: systemd did not finish booting within {timeout:.0f} s "
                       f"(state '{states.get(name)}'): see 'podman logs {name}'")
    for name, state in states.items():
        if state == "degraded":
            failed = out(["podman", "exec", name, "systemctl", "--failed", "--no-legend",
                          "--plain"], check=False)
            say(f"warning: {name} is degraded: {failed.replace(chr(10), '; ')}")
    return states


def warm_apt_cache(name: str, tries: int = 3, timeout: float = 120) -> None:
    """One container fetches the package indexes through the host's cache first: the cache
    fails when many clients ask it for the same index in the same second ("Failure to move
    file ... out of the way"), which left apt on some nodes waiting for ever. Bounded, retried;
    a cache that still fails is said, and the deploy's own bounded retries take over."""
    for attempt in range(1, tries + 1):
        try:
            proc = run(["podman", "exec", name, "apt-get", "update", "-qq"], check=False,
                       timeout=timeout)
        except subprocess.TimeoutExpired:
            say(f"warning: apt-get update in {name} ran past {timeout:.0f} s (try {attempt})")
            continue
        if proc.returncode == 0:
            return
        say(f"warning: apt-get update in {name} failed (try {attempt}): "
            f"{proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    say("warning: the apt cache could not be warmed; site.yml retries its own updates")


# Run in each container by `up`: the admin user with the lab's public key and password-less
# sudo (as a cloud image's first boot would set it up), then the node's SSH host key.
SSH_SETUP = r"""
set -eu
user=$1 key=$2
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
printf '%s\n' "$key" > "/home/$user/.ssh/authorized_keys.new"
chown "$user:$user" "/home/$user/.ssh/authorized_keys.new"
chmod 0600 "/home/$user/.ssh/authorized_keys.new"
mv "/home/$user/.ssh/authorized_keys.new" "/home/$user/.ssh/authorized_keys"
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$user" > /etc/sudoers.d/90-baton-lab
chmod 0440 /etc/sudoers.d/90-baton-lab
visudo -cqf /etc/sudoers.d/90-baton-lab
systemctl is-active --quiet ssh || systemctl start ssh
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


def ensure_ssh_access(topo: dict[str, Any]) -> None:
    """The lab's SSH key (made once, kept in .lab/ssh), the admin user on every running node,
    and a known_hosts file with every node's host key, read through podman (the trusted
    console path, as a cloud's first-boot output would be) and keyed by address and name."""
    SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not SSH_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "baton-lab",
             "-f", str(SSH_KEY)])
    public = SSH_KEY.with_suffix(".pub").read_text().strip()
    lines = []
    for host in topo["hosts"]:
        if container_state(host["container"]) != "running":
            continue
        proc = run(["podman", "exec", "-i", host["container"], "bash", "-s", "--", SSH_ADMIN,
                    public], input_=SSH_SETUP.encode(), check=False)
        if proc.returncode != 0:
            raise LabError(f"{host['container']}: setting up SSH access failed: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
        keytype, key = proc.stdout.decode().split()[:2]
        lines.append(f"{host['address']},{host['name']} {keytype} {key}")
    tmp = SSH_KNOWN_HOSTS.with_suffix(".new")
    tmp.write_text("".join(f"{line}\n" for line in sorted(lines)))
    tmp.replace(SSH_KNOWN_HOSTS)


def container_state(name: str) -> str:
    info = inspect_container(name)
    return "absent" if info is None else info["State"]["Status"]


# --------------------------------------------------------------------------- commands

def cmd_up(size: str, kind: str | None = None) -> None:
    check_size(size)
    up_size = current_size()
    if up_size and up_size != size and lab_containers():
        raise LabError(f"the lab is up as size {up_size}: run 'make lab-down' first, then "
                       f"'make lab-up LAB={size}'")
    up_kind = IMAGE_KIND_FILE.read_text().strip() if IMAGE_KIND_FILE.exists() else "base"
    if kind and up_size and kind != up_kind and lab_containers():
        raise LabError(f"the lab is up on the {up_kind} image: run 'make lab-down' first, then "
                       f"'labctl.py up --image {kind}'")
    kind = kind or (up_kind if up_size and lab_containers() else "base")
    ensure_prereqs()
    topo = load_topology(size)
    started = time.monotonic()
    ref = build_image()
    if kind == "packages":
        ref = build_packages_image(ref)
    ensure_networks(topo)
    ensure_routes(topo)
    ensure_firewall(topo)
    names = ensure_containers(topo, ref)
    ensure_firewall(topo)
    STATE_DIR.mkdir(exist_ok=True)
    SIZE_FILE.write_text(size + "\n")
    IMAGE_KIND_FILE.write_text(kind + "\n")
    wait_systemd(names)
    ensure_ssh_access(topo)
    warm_apt_cache(names[0])
    say(f"{size} lab up: {len(names)} hosts in {len(topo['sites'])} sites "
        f"({time.monotonic() - started:.0f} s)")


def cmd_down() -> None:
    if shutil.which("podman"):
        names = [c["Names"][0] for c in lab_containers()]
        if names:
            run(["podman", "rm", "-f", "-t", "5", *names])
            say(f"removed {len(names)} containers")
        for name in lab_networks():
            run(["podman", "network", "rm", "-f", name])
            say(f"removed network {name}")
    if shutil.which("iptables"):
        remove_firewall()
    if shutil.which("ip"):
        remove_routes()
    SIZE_FILE.unlink(missing_ok=True)
    IMAGE_KIND_FILE.unlink(missing_ok=True)
    say("lab down")


def status_rows(topo: dict[str, Any]) -> list[dict[str, Any]]:
    cut = set(partitioned_regions()) if shutil.which("iptables") else set()
    rows = []
    for h in topo["hosts"]:
        state = container_state(h["container"])
        systemd = "-"
        if state == "running":
            proc = run(["podman", "exec", h["container"], "systemctl", "is-system-running"],
                       check=False)
            systemd = proc.stdout.decode().strip() or "unknown"
        rows.append({**h, "state": state, "systemd": systemd, "partitioned": h["site"] in cut})
    return rows


def cmd_status(as_json: bool) -> int:
    size = current_size()
    if not size:
        if as_json:
            print(json.dumps({"size": None, "hosts": []}))
        else:
            say("the lab is down (make lab-up starts it)")
        return 3
    rows = status_rows(load_topology(size))
    if as_json:
        print(json.dumps({"size": size, "hosts": rows}, indent=2))
    else:
        print(f"lab size {size}")
        print(f"{'site':10} {'host':12} {'address':14} {'container':10} {'systemd':10} network")
        for r in rows:
            note = "PARTITIONED" if r["partitioned"] else ""
            print(f"{r['site']:10} {r['name']:12} {r['address']:14} {r['state']:10} "
                  f"{r['systemd']:10} {r['network']} {note}")
    return 0 if all(r["state"] == "running" for r in rows) else 1


def up_topology() -> dict[str, Any]:
    size = current_size()
    if not size:
        raise LabError("the lab is down: run 'make lab-up' first")
    return load_topology(size)


def cmd_region(action: str, name: str, graceful: bool = False) -> None:
    topo = up_topology()
    site = region_of(topo, name, any_site=True)  # the global site can be lost too
    names = [h["container"] for h in site["hosts"]]
    if action == "stop" and graceful:
        # A shutdown: systemd stops every service in order, for up to 10 s.
        run(["podman", "stop", "-t", "10", *names])
        say(f"stopped region {name} (shut down): {' '.join(names)}")
    elif action == "stop":
        # A region loss is a power or network loss: every process of every host dies at once
        # (SIGKILL to each container's init), mid-write, with no lease renewed after it.
        # One listing, then one kill: nothing delays the fault. A container that stopped in
        # between is down already (kill's complaint about it changes nothing).
        def running_now() -> list[str]:
            up = set(out(["podman", "ps", "--filter", "status=running", "--format",
                          "{{.Names}}"]).split())
            return [n for n in names if n in up]

        running = running_now()
        if running:
            run(["podman", "kill", "--signal", "KILL", *running], check=False)
            run(["podman", "wait", *running], check=False)
        left = running_now()
        if left:
            raise LabError(f"region {name}: {' '.join(left)} still running after the kill")
        say(f"stopped region {name} (killed): {' '.join(names)}")
    else:
        run(["podman", "start", *names])
        ensure_firewall(topo)
        wait_systemd(names)
        say(f"started region {name}: {' '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labctl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the image if needed and start the lab")
    up.add_argument("--size", default=os.environ.get("LAB") or "mini")
    up.add_argument("--image", choices=IMAGE_KINDS,
                    help="base (default): site.yml installs every package, as on a fresh VM; "
                         "packages: the roles' packages are in the image already (installed, "
                         "services disabled), for faster deploys of many nodes (default: what "
                         "the running lab uses)")
    sub.add_parser("down", help="remove every lab container, network and firewall rule")
    st = sub.add_parser("status", help="every host by site; exit 1 if any is not running")
    st.add_argument("--json", action="store_true")
    img = sub.add_parser("image", help="build the base image (cached by content)")
    img.add_argument("--force", action="store_true")
    sub.add_parser("image-ref", help="print the image reference for the current inputs")
    sub.add_parser("prereqs", help="install host packages and start the apt cache")
    for name in ("stop-region", "start-region", "partition"):
        sub.add_parser(name).add_argument("region")
        # the region is checked against the inventory, which names the regions
    sub.choices["stop-region"].add_argument(
        "--graceful", action="store_true",
        help="shut the hosts down (podman stop) instead of killing them at once")
    heal_p = sub.add_parser("heal", help="remove a region's partition (all when none named)")
    heal_p.add_argument("region", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            cmd_up(args.size, args.image)
        elif args.cmd == "down":
            cmd_down()
        elif args.cmd == "status":
            return cmd_status(args.json)
        elif args.cmd == "image":
            ensure_prereqs()
            print(build_image(force=args.force))
        elif args.cmd == "image-ref":
            print(image_ref())
        elif args.cmd == "prereqs":
            ensure_prereqs()
        elif args.cmd in ("stop-region", "start-region"):
            cmd_region(args.cmd.split("-")[0], args.region,
                       graceful=getattr(args, "graceful", False))
        elif args.cmd == "partition":
            partition(up_topology(), args.region)
        elif args.cmd == "heal":
            heal(up_topology(), args.region)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
