import sys

from vtibgp.tools.cli import main

sys.exit(main())
