"""``python -m cli.hakuriver``: the same as the ``hakuriver`` command."""

from cli.hakuriver.main import main

raise SystemExit(main())
