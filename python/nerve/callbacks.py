"""Training callbacks (Keras-style hooks called by ``model.fit``).

Subclass :class:`Callback` and override the hooks you need. ``fit`` runs whole
runs of batches in one C++ call unless a callback overrides a per-batch hook,
so callbacks that only act per epoch cost nothing per batch.
"""


class Callback:
    """Base class: every hook receives ``logs``, a dict of the current values."""

    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def wants_batches(self):
        """True when this callback overrides a per-batch hook."""
        cls = type(self)
        return cls.on_batch_begin is not Callback.on_batch_begin or cls.on_batch_end is not Callback.on_batch_end
