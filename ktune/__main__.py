import sys

from ktune.cli import main

sys.exit(main())
