"""End to end: nerve vs PyTorch eager on the reference MLP (see nerve/benchmark.py).

    python bench/train_mlp.py --against torch --json bench/results/train_mlp.json
"""
import sys

from nerve.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
