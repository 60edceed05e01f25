import sys

from absdsl.cli import main

sys.exit(main())
