"""python -m evaluation: the same as codeparrot-eval."""

from evaluation.cli import main

raise SystemExit(main())
