"""Serving: the model server of an endpoint instance (`model_server`, `handlers`, `codecs`), the
endpoint engine and its gateway client."""
