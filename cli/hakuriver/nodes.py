"""``hakuriver node ...``: the nodes' resources and load, the cluster's health, revoking and
forgetting a node."""

from __future__ import annotations

from cyclopts import App

from cli.hakuriver.invocation import (
    Connection,
    JsonFlag,
    connection,
    note,
    print_json,
    reported,
    say,
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


@node_app.command
@reported
def revoke(node: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Revoke a node (admin): disconnect its runner and refuse its credential from now on.

    Its tasks are lost as when it goes offline. To take it back, make a join token
    (`hakuriver token create --join`) and start its runner with `--join`.

    Parameters
    ----------
    node
        The node's name.
    as_json
        Print the API's answer.
    """
    with connection(conn).client() as client:
        answer = client.revoke_node(node)
    if as_json:
        print_json(answer)
    else:
        say(
            f"revoked node {node}: its runner is disconnected and its credential refused"
            " (to take it back: `hakuriver token create --join`, then `hakuriver runner --join`)"
        )
    return 0


@node_app.command
@reported
def forget(
    node: str,
    /,
    *,
    reason: str = "",
    as_json: JsonFlag = False,
    conn: Connection | None = None,
) -> int:
    """Forget a node (admin) that is offline and will not return: remove it from the node
    list; its tasks still holding resources there (state unknown) are recorded lost.

    Refused while the node is online (stop its runner first). Its credential still works:
    revoke it too (`hakuriver node revoke`) if the machine is gone. A forgotten node whose
    runner says hello again registers as a new node.

    Parameters
    ----------
    node
        The node's name.
    reason
        Why (recorded in the node.forgotten event and the lost tasks' reason).
    as_json
        Print the API's answer.
    """
    with connection(conn).client() as client:
        answer = client.forget_node(node, reason)
    if as_json:
        print_json(answer)
    else:
        lost = answer.get("tasks_lost", [])
        say(f"forgot node {node}" + (f"; {len(lost)} task(s) recorded lost" if lost else ""))
    return 0
