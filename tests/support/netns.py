"""A runner's own network, to partition it: a network namespace joined to this one by veth.

``NetworkNamespace`` makes a namespace and a veth pair; the host end stays here with
``host_address`` (the control plane listens on it), the other end is the namespace's only
link. A process started under ``wrap`` (``ip netns exec NS``) reaches the host through the
pair alone, so what is done to the pair is done to that runner only:

- ``degrade(loss_pct, delay_ms)``: ``tc netem`` loss and delay on the namespace's end when
  the kernel has ``sch_netem``; otherwise (this project's machines: ``CONFIG_NET_SCH_NETEM``
  unset and no ``modprobe``) random loss by an nftables ``numgen`` rule and delay by a
  ``tbf`` rate limit, both in the namespace. ``mode`` says which.
- ``cut()``: every packet on the pair dropped silently, both ways (nftables in the
  namespace; ``netem loss 100%`` where nftables is missing): a partition, not a reset.
- ``heal()``: all of it removed.

Everything is done inside the namespace this helper made; ``close()`` kills the processes
left in it (they are this test's), deletes the pair and the namespace, and is safe to call
twice. Needs root (CAP_NET_ADMIN); ``unavailable()`` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess

from support.waiting import wait_until

_TABLE = "hakuriver_chaos"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network faults need root (ip netns, veth, tc, nftables)"
    if shutil.which("ip") is None:
        return "network faults need iproute2 (ip)"
    if shutil.which("nft") is None and shutil.which("tc") is None:
        return "network faults need nftables (nft) or tc with sch_netem"
    probe = f"hrprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.234.0.0/16 that no interface here uses (tests run in parallel)."""
    used = _run("ip", "-o", "-4", "addr", "show").stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.234.{random.randrange(256)}.{random.randrange(64) * 4}/30")
        if f" {net[1]}/" not in used and f" {net[2]}/" not in used:
            return net
    raise RuntimeError("no free /30 in 10.234.0.0/16")


class NetworkNamespace:
    """A namespace with one veth link to this one; faults applied inside it."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.name = f"hrchaos{tag}"
        self.host_link = f"hrc{tag}h"  # at most 15 characters
        self.ns_link = f"hrc{tag}n"
        net = _free_subnet()
        self.host_address = str(net[1])
        self.ns_address = str(net[2])
        self.prefix = net.prefixlen
        self.mode = "healthy"
        self.netem = False
        self.nft = False
        self._made = False

    @property
    def wrap(self) -> tuple[str, ...]:
        """The prefix that runs a command inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def _in(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(*self.wrap, *argv, check=check)

    def create(self) -> NetworkNamespace:
        """Make the namespace and the pair, addressed and up; probe what faults it can do."""
        _run("ip", "netns", "add", self.name)
        self._made = True
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
        _run("ip", "link", "set", self.ns_link, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/{self.prefix}", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        self._in("ip", "link", "set", "lo", "up")
        self._in("ip", "addr", "add", f"{self.ns_address}/{self.prefix}", "dev", self.ns_link)
        self._in("ip", "link", "set", self.ns_link, "up")
        self.netem = self._netem_works()
        self.nft = shutil.which("nft") is not None and self._nft_table()
        if not (self.netem or self.nft):
            raise RuntimeError("neither tc netem nor nftables works in the namespace")
        return self

    def _netem_works(self) -> bool:
        tried = self._in(
            "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False
        )
        if tried.returncode != 0:
            return False
        self._in("tc", "qdisc", "del", "dev", "lo", "root", check=False)
        return True

    def _nft_table(self) -> bool:
        script = (
            f"table inet {_TABLE} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"
        )
        return self._nft(script)

    def _nft(self, script: str) -> bool:
        done = subprocess.run(
            [*self.wrap, "nft", "-f", "-"], input=script, capture_output=True, text=True
        )
        return done.returncode == 0

    # -- faults ----------------------------------------------------------------------------

    def degrade(self, *, loss_pct: float, delay_ms: int) -> None:
        """Lose ``loss_pct`` % of the packets and delay the rest (see the module's docstring)."""
        self.heal()
        if self.netem:
            self._in(
                "tc", "qdisc", "replace", "dev", self.ns_link, "root", "netem",
                "delay", f"{delay_ms}ms", f"{max(1, delay_ms // 5)}ms",
                "loss", f"{loss_pct}%",
            )  # fmt: skip
            self.mode = f"netem delay {delay_ms}ms loss {loss_pct}%"
            return
        rules = "".join(
            f"add rule inet {_TABLE} {chain} {way}name {self.ns_link}"
            f" numgen random mod 1000 < {int(loss_pct * 10)} drop\n"
            for chain, way in (("input", "iif"), ("output", "oif"))
        )
        assert self._nft(rules), "nftables refused the loss rules"
        # A narrow link: each packet waits its turn, up to ``delay_ms`` in the queue.
        self._in(
            "tc", "qdisc", "replace", "dev", self.ns_link, "root", "tbf",
            "rate", "256kbit", "burst", "1540", "latency", f"{max(delay_ms, 50)}ms",
        )  # fmt: skip
        self.mode = f"nft loss {loss_pct}% + tbf 256kbit (no sch_netem)"

    def cut(self) -> None:
        """Drop every packet on the pair, both ways, without a word to either side."""
        self.heal()
        if self.nft:
            rules = "".join(
                f"add rule inet {_TABLE} {chain} {way}name {self.ns_link} drop\n"
                for chain, way in (("input", "iif"), ("output", "oif"))
            )
            assert self._nft(rules), "nftables refused the drop rules"
            self.mode = "cut (nft drop)"
        else:
            self._in("tc", "qdisc", "replace", "dev", self.ns_link, "root", "netem", "loss", "100%")
            self.mode = "cut (netem loss 100%)"

    def heal(self) -> None:
        """No loss, no delay, no cut."""
        if self.nft:
            self._in("nft", "flush", "chain", "inet", _TABLE, "input", check=False)
            self._in("nft", "flush", "chain", "inet", _TABLE, "output", check=False)
        self._in("tc", "qdisc", "del", "dev", self.ns_link, "root", check=False)
        self.mode = "healthy"

    # -- cleanup ---------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The processes living in the namespace."""
        if not self._made:
            return []
        done = _run("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def close(self) -> None:
        """Kill what runs inside, delete the pair and the namespace (idempotent)."""
        if not self._made:
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.pids(), timeout=10, interval=0.02)
        _run("ip", "link", "del", self.host_link, check=False)
        _run("ip", "netns", "del", self.name, check=False)
        self._made = False
