"""`python -m tuneforge ...` is the same as the `tuneforge` console script."""

from tuneforge.cli import main

raise SystemExit(main())
