import sys

from privacysf.cli.main import main

sys.exit(main())
