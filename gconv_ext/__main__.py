"""``python -m gconv_ext``: the command line of :mod:`gconv_ext.cli`."""
import sys

from gconv_ext.cli import main

sys.exit(main())
