import sys

from roiroa.cli import main

sys.exit(main())
