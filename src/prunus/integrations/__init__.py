"""prunus policies in other training loops: Hugging Face ``transformers.Trainer`` and Lightning.

- :mod:`prunus.integrations.hf`: ``PrunusTrainer`` (a thin ``transformers.Trainer`` subclass
  for the data policies and Rho-1), ``PrunusCallback`` (weight policies in any ``Trainer``),
  ``keep_rows`` (a static selection of a ``datasets.Dataset``). Needs ``prunus[lm]``.
- :mod:`prunus.integrations.lightning`: ``PrunusCallback`` (every policy), ``PrunusModule``
  (per-example losses), ``selection_loader`` / ``SelectionDataModule``. Needs
  ``prunus[lightning]``.

The policies are prunus's own objects (``prunus.data.online.get_online``,
``prunus.weights.get_sparsifier``), driven by :class:`prunus.integrations._bridge.PolicyRunner`;
nothing here reimplements a method. Importing this package imports neither framework.
"""
