import sys

from hierparse.cli import main

sys.exit(main())
