import sys

from clair_vec.cli import main

sys.exit(main())
