"""Progress output for fit: a live bar on a terminal, one line per epoch otherwise."""
import sys
import time


class Progress:
    def __init__(self, epochs, steps, verbose, stream=None):
        self.epochs, self.steps, self.verbose = epochs, steps, verbose
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def start_epoch(self, epoch):
        self.t0 = time.perf_counter()
        self.epoch = epoch
        if self.live:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")

    def update(self, step, samples, logs):
        if not self.live:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        width = 30
        done = int(width * step / max(self.steps, 1))
        bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
        metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        self.stream.write(f"\r{step}/{self.steps} [{bar}] - {samples / elapsed:,.0f} samples/s - {metrics}")
        self.stream.flush()

    def end_epoch(self, samples, logs):
        if not self.verbose:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        if self.live:
            self.stream.write(f"\r{self.steps}/{self.steps} [{'=' * 30}] - {elapsed:.2f}s - "
                              f"{samples / elapsed:,.0f} samples/s - {metrics}\n")
        else:
            self.stream.write(f"epoch {self.epoch + 1}/{self.epochs} - {elapsed:.2f}s - "
                              f"{samples / elapsed:,.0f} samples/s - {metrics}\n")
        self.stream.flush()
