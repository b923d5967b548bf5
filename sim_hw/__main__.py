import sys

from sim_hw.cli import main

sys.exit(main())
