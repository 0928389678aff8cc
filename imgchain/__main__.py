import sys

from imgchain.cli import main

sys.exit(main())
