"""A character-level language model: Embedding -> LSTM -> Dense over the
characters, trained on 14 of Shakespeare's sonnets (examples/data/sonnets.txt,
public domain, 8 KB), then asked to write.

    python examples/char_rnn.py [--epochs 12] [--cell LSTM|GRU] [--seconds 60]

Every training example is a window of `--window` characters; the target at
each step is the next character (return_sequences=True, so the Dense layer and
the cross-entropy apply at every step: batch x time rows). Training stops
after `--epochs` or `--seconds`, whichever comes first. The sample starts from
a seed line and draws each next character from the softmax at temperature
`--temperature` (lower: more conservative). Prints the loss per epoch, its
perplexity (e^loss; 1 = certain, the alphabet size = knowing nothing) and the
sample.
"""
import argparse
import os
import time

import numpy as np

import nerve as nv

HERE = os.path.dirname(os.path.abspath(__file__))


def load_text(path=os.path.join(HERE, "data", "sonnets.txt")):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return text, chars, np.array([index[c] for c in text], np.int64)


def windows(ids, window, stride):
    starts = np.arange(0, len(ids) - window - 1, stride)
    x = np.stack([ids[s:s + window] for s in starts])
    y = np.stack([ids[s + 1:s + window + 1] for s in starts])
    return x, y


def build(vocab, cell, units, embed, seed):
    nv.manual_seed(seed)
    model = nv.Sequential([
        nv.layers.Embedding(vocab, embed),
        getattr(nv.layers, cell)(units, return_sequences=True),
        nv.layers.Dense(vocab),
    ], input_dim=1)
    model.compile(optimizer=nv.optimizers.Adam(lr=3e-3, clipnorm=5.0), loss="cross_entropy")
    return model


def sample(model, chars, seed_text, length, temperature, window, rng):
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in seed_text if c in index]
    for _ in range(length):
        context = np.array([ids[-window:]], np.int64)
        logits = model.predict(context)[0, -1].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(chars), p=p / p.sum())))
    return "".join(chars[i] for i in ids)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", choices=["LSTM", "GRU", "SimpleRNN"], default="LSTM")
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--embed", type=int, default=24)
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=60.0, help="stop training after this long")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--length", type=int, default=300, help="characters to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    text, chars, ids = load_text()
    x, y = windows(ids, args.window, stride=3)
    print(f"{len(text)} characters, {len(chars)} distinct; {len(x)} windows of {args.window}")
    model = build(len(chars), args.cell, args.units, args.embed, args.seed)
    start = time.perf_counter()

    class TimeLimit(nv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = logs["loss"]
            print(f"epoch {epoch + 1}: loss {loss:.3f} (perplexity {np.exp(loss):.1f}), "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            if time.perf_counter() - start > args.seconds:
                self.model.stop_training = True

    hist = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0, callbacks=[TimeLimit()])
    rng = np.random.default_rng(args.seed)
    print("\n--- sample ---")
    print(sample(model, chars, "Shall I compare thee", args.length, args.temperature, args.window, rng))
    return hist


if __name__ == "__main__":
    main()
