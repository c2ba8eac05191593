"""The data wing, in the order data flows: ``corpus`` and ``sources`` (raw text and where it comes from),
``tokenizer``, ``filters``, ``chunking`` (tokenize, then cut into examples), ``packing``, ``streaming`` and
``mixtures``, and ``preparation``, which runs them once for a training run."""
