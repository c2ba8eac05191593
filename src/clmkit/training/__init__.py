"""The training wing, in the order a step runs: ``components`` (the one assembly both paths share),
``forward`` (the model without its logits), ``losses`` and ``cross_entropy``, the step itself in
``trainer`` (ClmTrainer) or ``loop`` (ClmLoop), ``metrics`` and ``flops`` for evaluation and logs,
``accounting`` (token counts), ``checkpoint`` and ``interrupt``."""
