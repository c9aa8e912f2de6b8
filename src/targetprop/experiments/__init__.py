"""Experiments on top of training: ``compare``, ``reproduce``, ``tune``, ``plot`` and ``table``.

``specs`` (the experiment files: comparison files and figure panels, one format), ``runner`` (run
or reuse each run), ``pipeline`` (a file's runs, picture and results), ``reports`` (tables, summary
lines, the area under the loss), ``tuning`` (grid search), ``plotting`` (pictures) and ``commands``
(the command line's wiring).
"""
