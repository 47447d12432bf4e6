"""nftables scripts for a lab host (pure text; herd.tools.lab.hosts loads them
with ``ip netns exec <host> nft -f -``).

Two tables in every host namespace:

- ``inet herdlab``: a named counter ``peer_tx`` of everything the host sends
  on peer links (TCP to or from the peer port), read to measure the bytes
  and packets the herd puts on the wire.
- ``inet herdlab_fault``: the fault now in place, replaced whole (atomically)
  by each new fault and deleted by a heal.

Faults drop on the receiving host's input, as a lossy or cut wire would: the
sender's packets leave (and are counted) and vanish, and its own socket sees
no error. A drop on the sender's output would fail its writes at once
(EPERM), which no real partition does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from herd.tools.lab.plan import PEER_PORT, Host

METER_TABLE = "herdlab"
FAULT_TABLE = "herdlab_fault"
PEER_COUNTER = "peer_tx"


def meter_script() -> str:
    """The counting table (created once, when the host is built)."""
    return (f"table inet {METER_TABLE} {{\n"
            f"  counter {PEER_COUNTER} {{ }}\n"
            "  chain count_out {\n"
            "    type filter hook output priority 10; policy accept;\n"
            f'    tcp dport {PEER_PORT} counter name "{PEER_COUNTER}"\n'
            f'    tcp sport {PEER_PORT} counter name "{PEER_COUNTER}"\n'
            "  }\n}\n")


@dataclass(frozen=True)
class Drop:
    """Drop ``percent`` % (at random) of the packets arriving from ``sources``."""

    sources: tuple[str, ...]
    percent: int = 100

    def rule(self) -> str:
        addresses = ", ".join(self.sources)
        chance = "" if self.percent >= 100 else f" numgen random mod 100 < {self.percent}"
        return f"ip saddr {{ {addresses} }}{chance} drop"


def heal_script() -> str:
    """Remove the fault table (whether there is one or not)."""
    return f"table inet {FAULT_TABLE} {{}}\ndelete table inet {FAULT_TABLE}\n"


def fault_script(drops: Sequence[Drop]) -> str:
    """Replace the host's fault table with one holding ``drops`` (none: heal)."""
    if not drops:
        return heal_script()
    rules = "".join(f"    {d.rule()}\n" for d in drops)
    return (heal_script() + f"table inet {FAULT_TABLE} {{\n"
            "  chain drop_in {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"{rules}  }}\n}}\n")


# -- faults as drops per host ------------------------------------------------------


Plan = dict[Host, list[Drop]]


def _addresses(group: Iterable[Host]) -> tuple[str, ...]:
    return tuple(h.address for h in sorted(group, key=lambda h: h.index))


def partition(side: Sequence[Host], rest: Sequence[Host]) -> Plan:
    """Nothing passes between ``side`` and ``rest`` (either way); the
    observer still reaches both, so both keep taking updates."""
    plan: Plan = {h: [Drop(_addresses(rest))] for h in side}
    plan.update({h: [Drop(_addresses(side))] for h in rest})
    return plan


def one_way(senders: Sequence[Host], receivers: Sequence[Host]) -> Plan:
    """Packets from ``senders`` never reach ``receivers``; the other way passes."""
    return {h: [Drop(_addresses(senders))] for h in receivers}


def loss(a: Host, b: Host, percent: int) -> Plan:
    """``percent`` % of the packets between ``a`` and ``b`` lost, each way."""
    if not 0 < percent <= 100:
        raise ValueError(f"loss percent {percent} not within 1..100")
    return {a: [Drop((b.address,), percent)], b: [Drop((a.address,), percent)]}


def scripts(plan: Mapping[Host, Sequence[Drop]]) -> dict[Host, str]:
    """The nft script for each host the plan touches."""
    return {host: fault_script(drops) for host, drops in plan.items()}
