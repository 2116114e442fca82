// Microbenchmarks of nerve's kernels, each against the machine's own limit
// measured in the same binary: GEMM in GFLOP/s (shapes of the reference MLP
// 784-512-256-10), bandwidth-bound kernels (optimizers, activations) in GB/s
// next to a copy and a triad loop over the same sizes.
//
//   build/bench/bench/bench_kernels --benchmark_counter_tabular=true
//
// Bytes counted per element are the compulsory traffic of the kernel: what it
// must read and write once (e.g. Adam: read p, g, m, v; write p, m, v = 28 B).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nerve/activation.hpp"
#include "nerve/arena.hpp"
#include "nerve/gemm.hpp"
#include "nerve/loss.hpp"
#include "nerve/optimizer.hpp"
#include "nerve/parallel.hpp"

namespace {

using nerve::AlignedBuffer;
using nerve::Index;

void fill(AlignedBuffer& b, float lo, float hi, std::uint32_t seed) {
  std::uint32_t s = seed * 2654435761u + 1u;
  for (Index i = 0; i < b.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    b.data()[i] = lo + (hi - lo) * static_cast<float>(s >> 8) * (1.0f / 16777216.0f);
  }
}

// A per-second counter of `amount` per iteration, printed with SI prefixes
// (G = 1e9): FLOP/s, bytes/s, elem/s.
benchmark::Counter rate(double amount) {
  return benchmark::Counter(amount, benchmark::Counter::kIsIterationInvariantRate,
                            benchmark::Counter::kIs1000);
}

void set_threads(benchmark::State& st, int arg_index) {
  nerve::set_num_threads(static_cast<int>(st.range(arg_index)));
}

// ---------------------------------------------------------------------------
// GEMM. kind 0: forward Y = X W (M=batch, N=out, K=in); 1: dW = X^T dZ
// (M=in, N=out, K=batch); 2: dX = dZ W^T (M=batch, N=in, K=out).
void BM_gemm(benchmark::State& st) {
  const int kind = static_cast<int>(st.range(0));
  const Index batch = st.range(1), in = st.range(2), out = st.range(3);
  set_threads(st, 4);
  AlignedBuffer x(batch * in), w(in * out), dz(batch * out), y(batch * out), dw(in * out),
      dx(batch * in);
  fill(x, -1, 1, 1);
  fill(w, -0.1f, 0.1f, 2);
  fill(dz, -1, 1, 3);
  double flops = 2.0 * batch * in * out;
  for (auto _ : st) {
    if (kind == 0)
      nerve::gemm(false, false, batch, out, in, x.data(), in, w.data(), out, y.data(), out, false);
    else if (kind == 1)
      nerve::gemm(true, false, in, out, batch, x.data(), in, dz.data(), out, dw.data(), out, false);
    else
      nerve::gemm(false, true, batch, in, out, dz.data(), out, w.data(), out, dx.data(), in, false);
    benchmark::ClobberMemory();
  }
  st.counters["FLOP/s"] = rate(flops);
  // The label names the product and its GEMM shape M x K x N.
  static const char* names[] = {"fwd XW", "dW=X^T dZ", "dX=dZ W^T"};
  const Index shape[3][3] = {{batch, in, out}, {in, batch, out}, {batch, out, in}};
  st.SetLabel(std::string(names[kind]) + " " + std::to_string(shape[kind][0]) + "x" +
              std::to_string(shape[kind][1]) + "x" + std::to_string(shape[kind][2]));
}

void gemm_args(benchmark::internal::Benchmark* b) {
  const int layers[3][2] = {{784, 512}, {512, 256}, {256, 10}};
  for (int threads : {1, 2})
    for (int batch : {1, 32, 128, 512, 2048})  // batch 1: matrix-vector and rank-1 paths
      for (auto& l : layers)
        for (int kind = 0; kind < 3; ++kind) {
          if (kind == 2 && l[0] == 784) continue;  // no dX for the first layer
          b->Args({kind, batch, l[0], l[1], threads});
        }
  // The wide MLP's 2048-wide layers (784-2048-2048-10) at batch 512, and the
  // deep narrow one's 128 x 128 layers (784-(128 x 20)-10) at batch 512 and 2048.
  for (int threads : {1, 2})
    for (int kind = 0; kind < 3; ++kind) {
      if (kind != 2) b->Args({kind, 512, 784, 2048, threads});  // no dX for the first layer
      b->Args({kind, 512, 2048, 2048, threads});
      for (int batch : {512, 2048}) b->Args({kind, batch, 128, 128, threads});
    }
  // A square product: the best rate this GEMM reaches on this machine.
  for (int threads : {1, 2}) b->Args({0, 2048, 2048, 2048, threads});
}
BENCHMARK(BM_gemm)->Apply(gemm_args)->ArgNames({"kind", "batch", "in", "out", "thr"})->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// The dW half of a ReLU Dense layer's backward with a bias: dZ = dY * (Y > 0)
// in place, the bias gradient (dZ's column sums) and dW = X^T dZ. fused 0:
// three passes (activation_backward, column_sums, gemm); 1: gemm_b_pass, where
// the derivative and the sums ride along the packing of dZ (what Dense does).
void BM_dense_dw(benchmark::State& st) {
  const bool fused = st.range(0) != 0;
  const Index batch = st.range(1), in = st.range(2), out = st.range(3);
  set_threads(st, 4);
  AlignedBuffer x(batch * in), y(batch * out), dy(batch * out), dw(in * out), db(out);
  fill(x, -1, 1, 1);
  fill(y, -1, 1, 2);  // half the units "off"
  fill(dy, -1, 1, 3);
  const nerve::Activation relu = nerve::make_activation("relu", {});
  const nerve::ActContext actx;
  struct Rows {
    const nerve::Activation& act;
    const nerve::ActContext& actx;
    const float* y;
    Index out;
  } rows{relu, actx, y.data(), out};
  nerve::BRowPass pass;
  pass.ctx = &rows;
  pass.rewrite = [](const void* p, Index row, Index n, float* b) {
    const Rows& r = *static_cast<const Rows*>(p);
    nerve::activation_backward_run(r.act, nullptr, r.y + row * r.out, b, b, n, r.actx);
  };
  pass.col_sums = db.data();
  // The derivative is idempotent, so every iteration does the same work on dy.
  for (auto _ : st) {
    if (!fused || !nerve::gemm_b_pass(true, in, out, batch, x.data(), in, dy.data(), out, dw.data(),
                                      out, false, pass)) {
      nerve::activation_backward(relu, nullptr, y.data(), dy.data(), dy.data(), batch, out, actx);
      nerve::column_sums(dy.data(), batch, out, db.data(), false);
      nerve::gemm(true, false, in, out, batch, x.data(), in, dy.data(), out, dw.data(), out, false);
    }
    benchmark::ClobberMemory();
  }
  st.counters["FLOP/s"] = rate(2.0 * batch * in * out);
  st.SetLabel(fused ? "fused into packing" : "separate passes");
}
BENCHMARK(BM_dense_dw)
    ->ArgsProduct({{0, 1}, {128, 512, 2048}, {784}, {512}, {1, 2}})
    ->Args({0, 512, 512, 256, 2})->Args({1, 512, 512, 256, 2})
    ->ArgNames({"fused", "batch", "in", "out", "thr"})->UseRealTime()->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Bandwidth references: copy (b = a: 8 B/elem) and triad (a = b + s*c: 12 B/elem).
void BM_copy(benchmark::State& st) {
  const Index n = st.range(0);
  AlignedBuffer a(n), b(n);
  fill(a, -1, 1, 4);
  for (auto _ : st) {
    const float* __restrict src = a.data();
    float* __restrict dst = b.data();
#pragma omp simd
    for (Index i = 0; i < n; ++i) dst[i] = src[i];
    benchmark::ClobberMemory();
  }
  st.counters["bytes/s"] = rate(8.0 * n);
}
BENCHMARK(BM_copy)->Arg(1 << 14)->Arg(1 << 24)->Arg(10'000'000)->UseRealTime();

// The C library's memcpy on the same sizes: the copy reference is the better
// of the two (glibc may use non-temporal stores for large copies).
void BM_memcpy(benchmark::State& st) {
  const Index n = st.range(0);
  AlignedBuffer a(n), b(n);
  fill(a, -1, 1, 4);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), sizeof(float) * static_cast<std::size_t>(n));
    benchmark::ClobberMemory();
  }
  st.counters["bytes/s"] = rate(8.0 * n);
}
BENCHMARK(BM_memcpy)->Arg(1 << 14)->Arg(1 << 24)->Arg(10'000'000)->UseRealTime();

void BM_triad(benchmark::State& st) {
  const Index n = st.range(0);
  AlignedBuffer a(n), b(n), c(n);
  fill(b, -1, 1, 5);
  fill(c, -1, 1, 6);
  const float s = 0.5f;
  for (auto _ : st) {
    float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    const float* __restrict pc = c.data();
#pragma omp simd
    for (Index i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    benchmark::ClobberMemory();
  }
  st.counters["bytes/s"] = rate(12.0 * n);
}
BENCHMARK(BM_triad)->Arg(1 << 14)->Arg(500'000)->Arg(1 << 24)->Arg(10'000'000)->UseRealTime();

// The same triad split over threads in 32K-float chunks, like the optimizers.
void BM_triad_threads(benchmark::State& st) {
  const Index n = st.range(0);
  const int threads = static_cast<int>(st.range(1));
  AlignedBuffer a(n), b(n), c(n);
  fill(b, -1, 1, 5);
  fill(c, -1, 1, 6);
  const float s = 0.5f;
  constexpr Index kChunk = 1 << 15;
  const Index chunks = (n + kChunk - 1) / kChunk;
  for (auto _ : st) {
    nerve::parallel_for(chunks, threads, [&](Index k) {
      const Index lo = k * kChunk, hi = std::min(n, lo + kChunk);
      float* __restrict pa = a.data();
      const float* __restrict pb = b.data();
      const float* __restrict pc = c.data();
#pragma omp simd
      for (Index i = lo; i < hi; ++i) pa[i] = pb[i] + s * pc[i];
    });
    benchmark::ClobberMemory();
  }
  st.counters["bytes/s"] = rate(12.0 * n);
}
BENCHMARK(BM_triad_threads)
    ->ArgsProduct({{500'000, 10'000'000}, {1, 2}})
    ->ArgNames({"n", "thr"})
    ->UseRealTime();

// ---------------------------------------------------------------------------
// Fused optimizer steps over one span of n parameters.
void BM_optimizer(benchmark::State& st) {
  const bool adam = st.range(0) == 1;
  const Index n = st.range(1);
  set_threads(st, 2);
  AlignedBuffer p(n), g(n);
  fill(p, -0.1f, 0.1f, 7);
  fill(g, -1e-2f, 1e-2f, 8);
  // lr 1e-6: parameters barely move, so every step does the same work.
  nerve::Optimizer opt(adam ? "Adam" : "SGD",
                       adam ? std::vector<std::pair<std::string, double>>{{"lr", 1e-6}}
                            : std::vector<std::pair<std::string, double>>{{"lr", 1e-6}, {"momentum", 0.9}});
  opt.bind({nerve::ParamSpan{p.data(), g.data(), n, true}});
  opt.step();
  for (auto _ : st) {
    opt.step();
    benchmark::ClobberMemory();
  }
  // Adam: read p, g, m, v, write p, m, v. SGD+momentum: read p, g, b, write p, b.
  const double bytes = (adam ? 7.0 : 5.0) * 4.0 * n;
  st.counters["bytes/s"] = rate(bytes);
  st.counters["params/s"] = rate(static_cast<double>(n));
  st.SetLabel(adam ? "Adam" : "SGD momentum");
}
BENCHMARK(BM_optimizer)
    ->ArgsProduct({{0, 1}, {500'000, 10'000'000}, {1, 2}})
    ->ArgNames({"adam", "n", "thr"})
    ->UseRealTime();

// ---------------------------------------------------------------------------
// Every activation, forward then backward, on n floats (as 1024-wide rows).
void BM_activation(benchmark::State& st, nerve::Act kind, bool backward) {
  nerve::set_num_threads(1);  // single-thread figures, whatever ran before
  const Index n = st.range(0), cols = 1024, rows = n / cols;
  const nerve::ActInfo& info = nerve::activation_info(kind);
  nerve::Activation a = nerve::make_activation(info.name, {});
  nerve::ActContext ctx;
  ctx.training = true;
  const Index wf = info.width_factor;
  AlignedBuffer z(n), y(n * wf), dy(n * wf), dz(n);
  fill(z, -3, 3, 9);
  fill(dy, -1, 1, 10);
  nerve::activation_forward(a, z.data(), nullptr, y.data(), rows, cols, ctx);
  for (auto _ : st) {
    if (backward)
      nerve::activation_backward(a, z.data(), y.data(), dy.data(), dz.data(), rows, cols, ctx);
    else
      nerve::activation_forward(a, z.data(), nullptr, y.data(), rows, cols, ctx);
    benchmark::ClobberMemory();
  }
  // Forward: read z, write y. Backward: read the saved z or y and dy, write dz.
  const double bytes = backward ? 4.0 * n * (1 + 2 * wf) : 4.0 * n * (1 + wf);
  st.counters["bytes/s"] = rate(bytes);
  st.counters["elem/s"] = rate(static_cast<double>(n));
}

// ---------------------------------------------------------------------------
// Dense's backward tail, as run today: ReLU derivative applied to dY in place
// (one pass), then the bias gradient as column sums of dZ (a second pass).
// kind 0: derivative only; 1: column sums only; 2: both. The cost of 1 is
// what fusing the reduction into the derivative pass could save at most.
void BM_dense_tail(benchmark::State& st) {
  nerve::set_num_threads(1);  // single-thread figures, whatever ran before
  const int kind = static_cast<int>(st.range(0));
  const Index rows = st.range(1), cols = st.range(2), n = rows * cols;
  nerve::Activation relu = nerve::make_activation("relu", {});
  nerve::ActContext ctx;
  AlignedBuffer y(n), dy(n), db(cols);
  fill(y, 0, 1, 12);
  fill(dy, -1, 1, 13);
  for (auto _ : st) {
    if (kind != 1) nerve::activation_backward(relu, nullptr, y.data(), dy.data(), dy.data(), rows, cols, ctx);
    if (kind != 0) nerve::column_sums(dy.data(), rows, cols, db.data(), false);
    benchmark::ClobberMemory();
  }
  st.counters["elem/s"] = rate(static_cast<double>(n));
  static const char* names[] = {"relu derivative", "bias column sums", "both passes"};
  st.SetLabel(names[kind]);
}
BENCHMARK(BM_dense_tail)
    ->ArgsProduct({{0, 1, 2}, {32, 512, 2048}, {512}})
    ->ArgNames({"kind", "rows", "cols"})
    ->UseRealTime();

// ---------------------------------------------------------------------------
// Softmax cross-entropy with integer labels: loss and gradient in one pass.
void BM_cross_entropy(benchmark::State& st) {
  nerve::set_num_threads(1);  // single-thread figures, whatever ran before
  const Index rows = st.range(0), cols = st.range(1);
  nerve::Loss loss = nerve::make_loss("cross_entropy", {}, {});
  AlignedBuffer pred(rows * cols), grad(rows * cols);
  fill(pred, -3, 3, 11);
  std::vector<std::int64_t> labels(rows);
  for (Index i = 0; i < rows; ++i) labels[i] = (i * 7) % cols;
  nerve::Target t;
  t.labels = labels.data();
  double sink = 0;
  for (auto _ : st) {
    sink += nerve::loss_forward_backward(loss, pred.data(), t, rows, cols, grad.data());
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(sink);
  // Reads the logits, writes the gradient.
  st.counters["elem/s"] = rate(static_cast<double>(rows * cols));
  st.counters["bytes/s"] = rate(8.0 * rows * cols);
}
BENCHMARK(BM_cross_entropy)->Args({32, 10})->Args({2048, 10})->Args({2048, 1000})->UseRealTime();

// ---------------------------------------------------------------------------
// The finiteness check of a training batch (train_step's first pass): a
// 512 x 784 batch (1.6 MB, L3) and 10M floats (DRAM), 1 and 2 threads.
void BM_all_finite(benchmark::State& st) {
  const Index n = st.range(0);
  const int threads = static_cast<int>(st.range(1));
  nerve::set_num_threads(threads);
  AlignedBuffer x(n);
  fill(x, -1, 1, 14);
  bool ok = true;
  for (auto _ : st) {
    ok = ok && nerve::all_finite(x.data(), n / 784, 784, nullptr, nullptr);
    benchmark::ClobberMemory();
  }
  if (!ok) st.SkipWithError("finite data reported as not finite");
  nerve::set_num_threads(1);
  st.counters["bytes/s"] = rate(4.0 * n);
}
BENCHMARK(BM_all_finite)
    ->ArgsProduct({{512 * 784, 12'800 * 784}, {1, 2}})
    ->ArgNames({"n", "thr"})
    ->UseRealTime();

// One registration per activation, at a cache-resident and a memory-bound size.
const bool registered = [] {
  for (const nerve::ActInfo& info : nerve::activation_registry()) {
    for (bool bw : {false, true}) {
      const std::string name = "BM_act_" + info.name + (bw ? "_bwd" : "_fwd");
      benchmark::RegisterBenchmark(name.c_str(), BM_activation, info.kind, bw)
          ->Arg(1 << 14)
          ->Arg(1 << 24)
          ->UseRealTime();
    }
  }
  return true;
}();

}  // namespace

int main(int argc, char** argv) {
  // Single-threaded unless a benchmark says otherwise (the thr argument).
  nerve::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
