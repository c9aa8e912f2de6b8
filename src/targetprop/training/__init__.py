"""Training: a run's settings (``config``), its folder (``rundir``, with ``files`` and ``metrics``),
building it (``build``), the trainer and one step (``trainer``), the run from start to end
(``loop``, ``signals``, ``outcome``), ``checkpoint``, ``guard``, ``distributed``, ``models``,
``threads`` and ``environment``."""
