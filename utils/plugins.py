"""The engine's extension point: Plugin (one hook per stage, each a no-op by default) and Plugins,
the list of them the engine calls (every hook of every plugin, in order, as detectron2's hooks)."""

STATES_KEY = "plugin_states"  # ckpt['plugin'] of a run with several plugins: {STATES_KEY: [state, ...]}


class Plugin:
    """Extension point of the engine. Every method has a no-op default.

    In setup() the engine offers: model (bare DetectionModel, hyp set), device, hyp (scaled), opt, data_dict,
    nc, names, imgsz, dataset, train_loader, save_dir, amp/autocast settings, rank. A plugin may replace
    engine.train_loader by one whose batches carry a fifth item, n_labeled: only the first n_labeled images
    have labels, and the detection loss scores only those (utils/unlabeled.py).
    """

    loss_names: tuple = ()

    def restore_options(self, opt, saved):
        """On --resume, before any work: take this plugin's options back from the interrupted run.
        opt: the resumed run's options (the checkpoint's over this command's flags, updated in place);
        saved: the checkpoint's `opt` dict as stored."""

    def setup(self, engine):
        """Model, data, device and hyp exist; the optimiser does not yet."""

    def trainable_modules(self):
        """Extra nn.Modules to optimise (same 3 parameter groups) and checkpoint; not in the EMA."""
        return []

    def on_train_start(self, engine):
        """Optimiser, EMA and DDP wrapper exist; called once before the first step."""

    def before_forward(self, imgs, targets):
        """Called in the autocast region before the student forward, with the batch as it will see it. The
        place to run a frozen model (a teacher) on the batch: on a CPU its forward then reuses the memory of
        the last step instead of running beside the student's live activations (3-10% faster there)."""

    def step_loss(self, imgs, targets, preds):
        """Called in the autocast region after the student forward -> (loss (1,) or None, {name: tensor})."""
        return None, {}

    def on_epoch_end(self, engine, epoch):
        """After the epoch's validation and checkpoint."""

    def teardown(self, engine):
        """Always called (try/finally), also on error."""

    def state_dict(self):
        """Saved as ckpt['plugin'] in last.pt."""
        return {}

    def load_state_dict(self, state):
        """Restored on --resume."""


class Plugins:
    """Every hook of every plugin, in list order; the engine talks to this, never to one plugin."""

    def __init__(self, plugins=()):
        self.items = list(plugins)

    @property
    def loss_names(self):
        """The extra loss columns of all plugins, in order."""
        return tuple(n for p in self.items for n in p.loss_names)

    def call(self, hook, *args):
        """Run one no-result hook (restore_options, setup, on_train_start, before_forward, on_epoch_end) of
        each plugin."""
        for p in self.items:
            getattr(p, hook)(*args)

    def trainable_modules(self):
        return [m for p in self.items for m in (p.trainable_modules() or [])]

    def step_loss(self, imgs, targets, preds):
        """Sum of the plugins' losses (None when none adds one) and all their logged items."""
        total, items = None, {}
        for p in self.items:
            loss, terms = p.step_loss(imgs, targets, preds)
            if loss is not None:
                loss = loss.float().reshape(-1)[:1]
                total = loss if total is None else total + loss
            items.update(terms or {})
        return total, items

    def teardown(self, engine):
        """Every plugin's teardown, also when an earlier one raises (the first error is raised after)."""
        error = None
        for p in self.items:
            try:
                p.teardown(engine)
            except Exception as e:  # noqa: BLE001 - the others must still release their resources
                error = error or e
        if error is not None:
            raise error

    def state_dict(self):
        """ckpt['plugin']: one plugin's state as is (the format of single-plugin runs), several in a list."""
        states = [p.state_dict() or None for p in self.items]
        if len(states) == 1:
            return states[0]
        return {STATES_KEY: states} if any(states) else None

    def load_state_dict(self, state):
        if not state:
            return
        states = [state] if len(self.items) == 1 else state.get(STATES_KEY, [])
        for p, s in zip(self.items, states):
            if s:
                p.load_state_dict(s)
