"""A Redis Cluster's nodes as `CLUSTER NODES` describes them: which is primary of how many slots,
which replicates which, which is down. One reading for both runtimes (natively the nodes are told
apart by port, under Docker by the name each announces)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    id: str
    port: int
    hostname: str  # the name it announces ("" natively)
    role: str  # "primary", "replica", or "down"
    slots: int  # how many slots it holds (a primary, or one that is down and not replaced yet), else 0
    primary: str = ""  # a replica's primary, by id

    @property
    def serving(self) -> bool:
        return self.role == "primary" and self.slots > 0


def parse(text: str) -> list[Node]:
    """CLUSTER NODES' lines: `id ip:port@bus[,hostname] flags primary-id ping pong epoch link slots...`."""
    nodes = []
    for row in (line.split() for line in text.splitlines() if line.strip()):
        address, _, hostname = row[1].partition(",")
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        flags = row[2].split(",")
        # A primary that is down keeps its slots here until its replica has taken them over.
        slots = sum(_slot_count(r) for r in row[8:] if not r.startswith("[")) if "master" in flags else 0
        if "fail" in flags or "fail?" in flags or (row[7] != "connected" and "myself" not in flags):
            nodes.append(Node(row[0], port, hostname, "down", slots))
        elif "master" in flags:
            nodes.append(Node(row[0], port, hostname, "primary", slots))
        else:
            nodes.append(Node(row[0], port, hostname, "replica", 0, row[3]))
    return nodes


def describe(node: Node, name_of: dict[str, str]) -> str:
    """"primary, 5461 slots", "replica of NAME" (its primary's name in `name_of`, by id) or "down"."""
    if node.role == "primary":
        return f"primary, {node.slots} slots"
    return f"replica of {name_of.get(node.primary, node.primary)}" if node.role == "replica" else "down"


def _slot_count(text: str) -> int:
    low, _, high = text.partition("-")
    return int(high or low) - int(low) + 1
