"""SageMaker's built-in algorithms: each a training entry point (run in the instance by the
launcher, like SageMaker's algorithm containers) and inference handlers for the model server.

`registry.ALGORITHMS` lists them; each algorithm module defines `SPEC` (its hyperparameters,
channels, content types and metric definitions), `train()` and the inference handlers
`model_fn`, `input_fn`, `predict_fn`, `output_fn`.
"""
