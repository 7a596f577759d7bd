"""`python -m attnverify`: the `attnverify` command line (see `attnverify.verify.cli`)."""

from attnverify.verify.cli import main

raise SystemExit(main())
