#!/usr/bin/env bash
# Every benchmark behind bench/README.md's figures, in one session, into
# bench/results/ (JSON + the printed tables in run_all.log). Assumes the
# module is built into python/nerve and bench_kernels into build/dev (see
# bench/README.md). Takes ~25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=python
out=bench/results
mkdir -p "$out"
bin=build/dev/bench/bench_kernels
{
  echo "# $(date -u) $(uname -n) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 -c "import nerve; print(nerve.build_info())"
  python3 bench/machine_limits.py --json "$out/machine_limits.json"
  if [ -x "$bin" ]; then
    "$bin" --benchmark_min_time=0.1 --benchmark_out="$out/bench_kernels.json" \
      --benchmark_out_format=json --benchmark_counters_tabular=false
  fi
  # The reference model decides the issue's targets: more, shorter interleaved rounds
  # (a neighbour on the host hits fewer of them).
  # PyTorch eager and jitted JAX (one process per thread count: XLA fixes its pool at start).
  python3 bench/train_mlp.py --against torch,jax --threads 1,2 --rounds 9 --seconds 0.15 --json "$out/train_mlp_ref.json"
  python3 bench/train_mlp.py --against torch,jax --threads 1,2 --model deep --json "$out/train_mlp_deep.json"
  python3 bench/train_mlp.py --against torch,jax --threads 1,2 --model wide --batches 1,32,128,512,2048 \
    --rounds 3 --json "$out/train_mlp_wide.json"
  # The same steps with a process spinning on one core (the busy neighbour):
  # 2 threads against 1, guard on and off, and PyTorch.
  python3 bench/busy_neighbour.py --against torch --batches 1,32,128,512,2048 --rounds 7
  # And with no neighbour: the guard must keep the 2-thread speed-up (stalls ~0).
  python3 bench/busy_neighbour.py --neighbours 0 --batches 1,32,128,512,2048
  # The deep model with subnormals flushed to zero in nerve and PyTorch, as
  # XLA always computes: at batch 1 Adam's first moments of its many
  # zero-gradient weights decay through the subnormal range (nerve's Adam
  # makes those lanes in double; this row shows what flushing still buys).
  python3 bench/train_mlp.py --against torch,jax --threads 1,2 --model deep --flush-denormal \
    --json "$out/train_mlp_deep_flush.json"
  # The reference model again at the avx2 level (issue 15: tables at each
  # level), PyTorch held to AVX2 as well (MKL and ATen's kernels), as on an
  # AVX2 machine; XLA's matmul takes no such cap.
  NERVE_CPU=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
    python3 bench/train_mlp.py --against torch,jax --threads 1,2 --rounds 5 --seconds 0.15 \
    --json "$out/train_mlp_ref_avx2.json"
  # LSTM / GRU against torch.nn and JAX lax.scan.
  python3 bench/recurrent.py --rounds 3 --seconds 0.2 --json "$out/recurrent.json"
  # The kernels per CPU level, in alternating fresh processes: GEMM against
  # OpenBLAS, the loss kernels.
  (cd bench && python3 gemm_levels.py --rounds 5 --threads 1 && python3 gemm_levels.py --rounds 5 --threads 2 \
    && python3 loss_levels.py --rounds 5 --threads 1)
  python3 bench/optimizer_step.py --json "$out/optimizer_step.json"
  python3 bench/peak_memory.py --json "$out/peak_memory.json"
  python3 bench/fit_loop.py
  python3 bench/flush_denormal.py
  # Single-threaded on both sides: at 16K floats neither splits the work, and
  # a thread pool waking on a busy machine would decide the ratio instead.
  python3 bench/bench_activations.py --threads 1 --rounds 9 --json "$out/activations.json" \
    --markdown "$out/activations.md"
  python3 bench/plot_throughput.py "$out/train_mlp_ref.json" --out docs/throughput.png
  echo "# done $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$out/run_all.log"
