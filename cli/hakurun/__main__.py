"""``python -m cli.hakurun``: the same as the ``hakurun`` command."""

from cli.hakurun.main import main

raise SystemExit(main())
