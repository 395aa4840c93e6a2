"""The `salvia` command: starts the server and, as a client of its API, shows what it holds."""
