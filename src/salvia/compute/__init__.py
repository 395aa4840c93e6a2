"""Where job instances run: the `Executor` interface and its implementations, the container
contract (`/opt/ml` and `SM_*`), and the runtime ("image") registry."""
