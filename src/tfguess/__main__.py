import sys

from tfguess.cli import main

sys.exit(main())
