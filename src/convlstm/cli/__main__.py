"""``python -m convlstm.cli`` (how ``torchrun -m convlstm.cli`` runs it): the ``convlstm``
command."""

import sys

from convlstm.cli import main

sys.exit(main())
