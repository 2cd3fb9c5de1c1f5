"""``hakuriver node ...``: the nodes' resources and load, and the cluster's health."""

from __future__ import annotations

from cyclopts import App

from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    note,
    print_json,
    reported,
    show,
)
from cli.hakuriver.render import health_report, node_detail, node_table

node_app = App(name="node", help="The nodes: resources, load, GPUs, temperatures.")


@node_app.command(name="list")
@reported
def list_nodes(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the nodes: online or not, free/total cores, memory and GPUs, NUMA nodes, load.

    Parameters
    ----------
    as_json
        Print the API's document ``{"nodes": [...]}``.
    """
    with connection(conn).client() as client:
        nodes = client.nodes()
    if as_json:
        print_json({"nodes": nodes})
    elif nodes:
        show(node_table(nodes))
    else:
        note("no nodes have registered yet (start one with `hakuriver runner`)")
    return 0


@node_app.command
@reported
def health(
    node: str | None = None, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Show the cluster's health and every node's detail, or one node's.

    Parameters
    ----------
    node
        Only this node.
    as_json
        Print the node's document; without NODE, ``{"health": {...}, "nodes": [...]}``.
    """
    with connection(conn).client() as client:
        if node is not None:
            detail = client.node(node)
            if as_json:
                print_json(detail)
            else:
                show(node_detail(detail))
            return 0
        summary, nodes = client.health(), client.nodes()
    if as_json:
        print_json({"health": summary, "nodes": nodes})
    else:
        show(health_report(summary, nodes))
    return 0
