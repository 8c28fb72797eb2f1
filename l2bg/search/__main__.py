import sys

from l2bg.search.cli import main

sys.exit(main())
