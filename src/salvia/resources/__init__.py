"""One module per resource family: operations' logic and state, no HTTP and no SQL."""
