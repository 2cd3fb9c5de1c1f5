"""``hakuriver ui``: open the dashboard in a browser, logged in by a one-time link.

The link carries a code the host exchanges, once and within a minute, for a browser
session of the token this CLI presents (as ``nomad ui -authenticate`` does); the token
itself never reaches the browser. The code is in the URL's fragment, which a browser
never sends to a server (nor to a proxy's log).
"""

from __future__ import annotations

import webbrowser

from cli.hakuriver.invocation import Connection, connection, note, reported, say


@reported
def ui(*, no_open: bool = False, conn: Connection | None = None) -> int:
    """Open the web dashboard, logged in as you (a one-time link, valid one minute).

    Parameters
    ----------
    no_open
        Print the link instead of opening a browser (e.g. over SSH: open it on your
        laptop, through a tunnel to the host's port).
    """
    with connection(conn).client() as client:
        link = client.ui_link()
        url = client.base_url + str(link["path"])
    if no_open or not webbrowser.open(url):
        note("open this link within a minute; it logs in once:")
        say(url)
        return 0
    note(f"opened the dashboard at {client.base_url}/ (the login link works once)")
    return 0
