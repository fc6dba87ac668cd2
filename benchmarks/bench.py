"""Benchmark suite of convlstm; a thin script over :mod:`convlstm.bench` (``convlstm benchmark``).

Examples::

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --shapes w16 w64 --json benchmarks/results/cpu.json
    python benchmarks/bench.py --device cuda --shapes w16 main_job --json out.json
"""

import sys

from convlstm.bench import main

if __name__ == "__main__":
    sys.exit(main())
