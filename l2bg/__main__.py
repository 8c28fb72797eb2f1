import sys

from l2bg.cli import main

sys.exit(main())
