"""``python -m cxr_tf.cli`` = ``cxr-tf``."""
import sys

from cxr_tf.cli import main

sys.exit(main())
