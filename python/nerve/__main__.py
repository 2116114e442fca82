"""``python -m nerve`` runs the ``nerve`` command (handy under ``mpirun ... python -m mpi4py -m nerve``)."""
import sys

from .cli import main

sys.exit(main())
